//! The store against real SQLite files in temporary directories.

use std::path::{Path, PathBuf};

use abgate_state::{DecisionRow, SplitChange, StateError, Store};
use serde_json::{json, Value};

fn db(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("state.db")
}

fn spec(name: &str) -> Value {
    json!({"host": "llama", "variants": [{"name": "stable"}, {"name": name}], "zeta": 1, "alpha": 2})
}

fn decision(at: u64, kind: &str, before: [u32; 2], after: [u32; 2]) -> DecisionRow {
    DecisionRow {
        at,
        kind: kind.to_owned(),
        reason: format!("{kind} at {at}"),
        summary: format!("{kind}: summary"),
        weights_before: before.to_vec(),
        weights_after: after.to_vec(),
        observations: json!({"error_rate": [0.01, 0.02], "n": at}),
    }
}

/// A second, raw connection: what an operator's `sqlite3` would see.
fn raw(path: &Path) -> rusqlite::Connection {
    rusqlite::Connection::open(path).expect("open raw connection")
}

#[test]
fn experiments_round_trip_in_creation_order_with_documents_verbatim() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&db(&dir)).unwrap();

    assert_eq!(
        store
            .put_experiment("b", &spec("b"), &json!({"phase": "ramp"}), 1_000)
            .unwrap(),
        1
    );
    assert_eq!(
        store
            .put_experiment("a", &spec("a"), &json!({"phase": "new"}), 2_000)
            .unwrap(),
        1
    );

    let b = store.experiment("b").unwrap().expect("b exists");
    assert_eq!(b.id, "b");
    assert_eq!(b.spec, spec("b"));
    // Key order survives (serde_json's preserve_order): the document is stored as written.
    assert_eq!(
        serde_json::to_string(&b.spec).unwrap(),
        serde_json::to_string(&spec("b")).unwrap()
    );
    assert_eq!(b.state, json!({"phase": "ramp"}));
    assert_eq!(
        (b.revision, b.created_at, b.updated_at, b.deleted),
        (1, 1_000, 1_000, false)
    );
    assert!(store.experiment("nope").unwrap().is_none());

    let ids: Vec<_> = store
        .experiments()
        .unwrap()
        .into_iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(ids, ["b", "a"], "by created_at, not by id");
}

#[test]
fn replacing_an_experiment_bumps_its_revision_and_keeps_created_at() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&db(&dir)).unwrap();
    store
        .put_experiment("x", &spec("v1"), &json!({"n": 0}), 1_000)
        .unwrap();

    assert_eq!(
        store
            .put_experiment("x", &spec("v2"), &json!({"n": 1}), 5_000)
            .unwrap(),
        2
    );

    let x = store.experiment("x").unwrap().unwrap();
    assert_eq!((x.spec, x.state), (spec("v2"), json!({"n": 1})));
    assert_eq!((x.revision, x.created_at, x.updated_at), (2, 1_000, 5_000));
    assert_eq!(store.experiments().unwrap().len(), 1);
}

#[test]
fn typed_documents_read_back_through_serde() {
    #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
    struct State {
        phase: String,
        weights: Vec<u32>,
    }
    let store = Store::open_in_memory().unwrap();
    let state = State {
        phase: "ramp".into(),
        weights: vec![90, 10],
    };
    store
        .put_experiment("x", &spec("c"), &serde_json::to_value(&state).unwrap(), 1)
        .unwrap();

    let x = store.experiment("x").unwrap().unwrap();
    assert_eq!(x.state_as::<State>().unwrap(), state);
    assert!(matches!(x.spec_as::<State>(), Err(StateError::Json(_))));
}

#[test]
fn decisions_split_history_and_analyses_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&db(&dir)).unwrap();
    store
        .put_experiment("x", &spec("c"), &json!({"step": 0}), 1_000)
        .unwrap();

    let d1 = decision(2_000, "SetWeights", [100, 0], [90, 10]);
    let d2 = decision(3_000, "Hold", [90, 10], [90, 10]);
    let d3 = decision(4_000, "Rollback", [90, 10], [100, 0]);
    assert_eq!(
        store
            .record_decision("x", 1, &d1, &json!({"step": 1}))
            .unwrap(),
        1
    );
    assert_eq!(
        store
            .record_decision("x", 2, &d2, &json!({"step": 2}))
            .unwrap(),
        2
    );
    assert_eq!(
        store
            .record_decision("x", 3, &d3, &json!({"step": 3}))
            .unwrap(),
        3
    );
    store.mark_applied("x", 1).unwrap();
    store
        .record_analysis("x", 2_500, &json!({"verdict": "inconclusive", "p": 0.4}))
        .unwrap();
    store
        .record_analysis("x", 2_500, &json!({"verdict": "second at same ms"}))
        .unwrap();
    store
        .record_analysis("x", 1_500, &json!({"verdict": "earlier"}))
        .unwrap();

    let x = store.experiment("x").unwrap().unwrap();
    assert_eq!((x.revision, x.updated_at), (4, 4_000));
    assert_eq!(x.state, json!({"step": 3}));
    assert_eq!(
        store.decisions("x").unwrap(),
        vec![(1, d1, true), (2, d2, false), (3, d3, false)]
    );
    // The hold changed no weights, so it left no split-history row.
    assert_eq!(
        store.split_history("x").unwrap(),
        vec![
            SplitChange {
                at: 2_000,
                weights: vec![90, 10],
                reason: "SetWeights at 2000".into()
            },
            SplitChange {
                at: 4_000,
                weights: vec![100, 0],
                reason: "Rollback at 4000".into()
            },
        ]
    );
    assert_eq!(
        store.analyses("x").unwrap(),
        vec![
            (1_500, json!({"verdict": "earlier"})),
            (2_500, json!({"verdict": "inconclusive", "p": 0.4})),
            (2_500, json!({"verdict": "second at same ms"})),
        ]
    );
    assert!(store.decisions("unknown").unwrap().is_empty());
    assert!(store.split_history("unknown").unwrap().is_empty());
    assert!(store.analyses("unknown").unwrap().is_empty());
}

#[test]
fn sequence_numbers_are_per_experiment() {
    let store = Store::open_in_memory().unwrap();
    store
        .put_experiment("a", &spec("a"), &json!({}), 1)
        .unwrap();
    store
        .put_experiment("b", &spec("b"), &json!({}), 1)
        .unwrap();
    let d = decision(2, "Hold", [50, 50], [50, 50]);
    assert_eq!(store.record_decision("a", 1, &d, &json!({})).unwrap(), 1);
    assert_eq!(store.record_decision("b", 1, &d, &json!({})).unwrap(), 1);
    assert_eq!(store.record_decision("a", 2, &d, &json!({})).unwrap(), 2);
}

#[test]
fn soft_delete_hides_the_experiment_but_keeps_its_history() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&db(&dir)).unwrap();
    store
        .put_experiment("gone", &spec("g"), &json!({"s": 0}), 1_000)
        .unwrap();
    store
        .put_experiment("kept", &spec("k"), &json!({"s": 0}), 1_001)
        .unwrap();
    let d = decision(2_000, "SetWeights", [100, 0], [50, 50]);
    store
        .record_decision("gone", 1, &d, &json!({"s": 1}))
        .unwrap();
    store
        .record_analysis("gone", 2_100, &json!({"verdict": "ok"}))
        .unwrap();

    assert!(store.delete_experiment("gone", 3_000).unwrap());

    let ids: Vec<_> = store
        .experiments()
        .unwrap()
        .into_iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(ids, ["kept"]);
    let gone = store
        .experiment("gone")
        .unwrap()
        .expect("still readable by id");
    assert!(gone.deleted);
    assert_eq!(
        (gone.revision, gone.updated_at, gone.state),
        (3, 3_000, json!({"s": 1}))
    );
    assert_eq!(
        store.decisions("gone").unwrap(),
        vec![(1, d.clone(), false)]
    );
    assert_eq!(store.split_history("gone").unwrap().len(), 1);
    assert_eq!(store.analyses("gone").unwrap().len(), 1);

    // Deleting again, or deleting what never existed, changes nothing.
    assert!(!store.delete_experiment("gone", 4_000).unwrap());
    assert!(!store.delete_experiment("never", 4_000).unwrap());
    // A deleted experiment takes no more decisions or analyses.
    assert!(matches!(
        store.record_decision("gone", 3, &d, &json!({})),
        Err(StateError::NotFound(_))
    ));
    assert!(matches!(
        store.record_analysis("gone", 5_000, &json!({})),
        Err(StateError::NotFound(_))
    ));
    // Its pending decision is superseded: no restart would re-apply it.
    assert!(store.unapplied().unwrap().is_empty());
}

#[test]
fn putting_a_deleted_experiment_again_revives_it_with_its_history() {
    let store = Store::open_in_memory().unwrap();
    store
        .put_experiment("x", &spec("1"), &json!({}), 1_000)
        .unwrap();
    let d = decision(2_000, "SetWeights", [100, 0], [50, 50]);
    store.record_decision("x", 1, &d, &json!({})).unwrap();
    store.delete_experiment("x", 3_000).unwrap();

    assert_eq!(
        store
            .put_experiment("x", &spec("2"), &json!({}), 4_000)
            .unwrap(),
        4
    );

    let x = store.experiment("x").unwrap().unwrap();
    assert!(!x.deleted);
    assert_eq!(x.created_at, 1_000);
    assert_eq!(
        store.record_decision("x", 4, &d, &json!({})).unwrap(),
        2,
        "seq continues"
    );
}

#[test]
fn stale_revision_is_a_conflict_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&db(&dir)).unwrap();
    store
        .put_experiment("x", &spec("c"), &json!({"step": 0}), 1_000)
        .unwrap();
    let d = decision(2_000, "SetWeights", [100, 0], [90, 10]);
    store
        .record_decision("x", 1, &d, &json!({"step": 1}))
        .unwrap();

    // A second controller (or a retry after a crash) decided from revision 1 too.
    let stale = decision(2_001, "Rollback", [100, 0], [100, 0]);
    match store.record_decision("x", 1, &stale, &json!({"step": "stale"})) {
        Err(StateError::Conflict {
            id,
            expected,
            found,
        }) => {
            assert_eq!((id.as_str(), expected, found), ("x", 1, 2));
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    // So is a revision from the future.
    assert!(matches!(
        store.record_decision("x", 7, &stale, &json!({})),
        Err(StateError::Conflict { found: 2, .. })
    ));

    let x = store.experiment("x").unwrap().unwrap();
    assert_eq!((x.revision, x.state), (2, json!({"step": 1})));
    assert_eq!(store.decisions("x").unwrap().len(), 1);
    assert_eq!(store.split_history("x").unwrap().len(), 1);
}

#[test]
fn two_stores_on_one_file_racing_from_one_revision_record_exactly_one_decision() {
    let dir = tempfile::tempdir().unwrap();
    let path = db(&dir);
    let first = Store::open(&path).unwrap();
    first
        .put_experiment("x", &spec("c"), &json!({}), 1)
        .unwrap();
    let second = Store::open(&path).unwrap();

    let results: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = [&first, &second]
            .into_iter()
            .flat_map(|store| std::iter::repeat_n(store, 4))
            .enumerate()
            .map(|(i, store)| {
                s.spawn(move || {
                    let d = decision(10 + i as u64, "SetWeights", [100, 0], [90, 10]);
                    store.record_decision("x", 1, &d, &json!({"by": i}))
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });

    let won: Vec<_> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
    assert_eq!(won, [&1]);
    assert!(results
        .iter()
        .filter_map(|r| r.as_ref().err())
        .all(|e| matches!(
            e,
            StateError::Conflict {
                expected: 1,
                found: 2,
                ..
            }
        )));
    assert_eq!(second.decisions("x").unwrap().len(), 1);
    assert_eq!(first.experiment("x").unwrap().unwrap().revision, 2);
}

#[test]
fn unknown_experiment_or_decision_is_not_found() {
    let store = Store::open_in_memory().unwrap();
    let d = decision(1, "Hold", [100, 0], [100, 0]);
    assert!(matches!(
        store.record_decision("nope", 1, &d, &json!({})),
        Err(StateError::NotFound(what)) if what.contains("nope")
    ));
    assert!(matches!(
        store.record_analysis("nope", 1, &json!({})),
        Err(StateError::NotFound(_))
    ));
    store
        .put_experiment("x", &spec("c"), &json!({}), 1)
        .unwrap();
    assert!(matches!(
        store.mark_applied("x", 1),
        Err(StateError::NotFound(_))
    ));
    assert!(matches!(
        store.mark_applied("nope", 1),
        Err(StateError::NotFound(_))
    ));
}

#[test]
fn unapplied_returns_exactly_the_decisions_recorded_but_not_marked_applied() {
    let dir = tempfile::tempdir().unwrap();
    let path = db(&dir);
    let store = Store::open(&path).unwrap();
    store
        .put_experiment("b", &spec("b"), &json!({}), 1)
        .unwrap();
    store
        .put_experiment("a", &spec("a"), &json!({}), 2)
        .unwrap();
    let mut recorded = Vec::new();
    for (i, id) in ["a", "b", "a", "b", "a"].into_iter().enumerate() {
        let revision = store.experiment(id).unwrap().unwrap().revision;
        let d = decision(
            10 + i as u64,
            "SetWeights",
            [100, 0],
            [100 - i as u32, i as u32],
        );
        let seq = store
            .record_decision(id, revision, &d, &json!({"i": i}))
            .unwrap();
        recorded.push((id.to_owned(), d, seq));
    }
    assert_eq!(store.unapplied().unwrap().len(), 5);

    // Applied: a#1 and b#2. Marking twice is harmless.
    store.mark_applied("a", 1).unwrap();
    store.mark_applied("b", 2).unwrap();
    store.mark_applied("b", 2).unwrap();

    let mut expected: Vec<_> = recorded
        .into_iter()
        .filter(|(id, _, seq)| !matches!((id.as_str(), seq), ("a", 1) | ("b", 2)))
        .collect();
    expected.sort_by(|x, y| (&x.0, x.2).cmp(&(&y.0, y.2)));
    assert_eq!(store.unapplied().unwrap(), expected);
    let seqs: Vec<_> = expected
        .iter()
        .map(|(id, _, seq)| (id.as_str(), *seq))
        .collect();
    assert_eq!(seqs, [("a", 2), ("a", 3), ("b", 1)]);

    // And the same after a restart.
    drop(store);
    assert_eq!(Store::open(&path).unwrap().unapplied().unwrap(), expected);
}

#[test]
fn reopening_keeps_everything_in_wal_mode() {
    let dir = tempfile::tempdir().unwrap();
    let path = db(&dir);
    let d1 = decision(2_000, "SetWeights", [100, 0], [75, 25]);
    let d2 = decision(3_000, "Promote", [75, 25], [0, 100]);
    let before = {
        let store = Store::open(&path).unwrap();
        store
            .put_experiment("x", &spec("c"), &json!({"step": 0}), 1_000)
            .unwrap();
        store
            .put_experiment("y", &spec("d"), &json!({"step": 0}), 1_100)
            .unwrap();
        store
            .record_decision("x", 1, &d1, &json!({"step": 1}))
            .unwrap();
        store.mark_applied("x", 1).unwrap();
        store
            .record_decision("x", 2, &d2, &json!({"step": 2}))
            .unwrap();
        store
            .record_analysis("y", 2_500, &json!({"verdict": "wait"}))
            .unwrap();
        store.delete_experiment("y", 4_000).unwrap();
        (
            store.experiments().unwrap(),
            store.experiment("y").unwrap(),
            store.decisions("x").unwrap(),
            store.split_history("x").unwrap(),
            store.analyses("y").unwrap(),
            store.unapplied().unwrap(),
        )
    };

    let store = Store::open(&path).unwrap();
    let after = (
        store.experiments().unwrap(),
        store.experiment("y").unwrap(),
        store.decisions("x").unwrap(),
        store.split_history("x").unwrap(),
        store.analyses("y").unwrap(),
        store.unapplied().unwrap(),
    );
    assert_eq!(after, before);
    assert_eq!(after.0.len(), 1);
    assert_eq!(after.2.len(), 2);
    assert_eq!(after.5.len(), 1);

    // The journal mode is stored in the file, so a fresh connection sees it.
    let conn = raw(&path);
    let mode: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    let check: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
    let fk_problems: i64 = conn
        .query_row("SELECT COUNT(*) FROM pragma_foreign_key_check", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(fk_problems, 0);
}

#[test]
fn migrations_run_once_however_often_the_file_is_opened() {
    let dir = tempfile::tempdir().unwrap();
    let path = db(&dir);
    for _ in 0..3 {
        let store = Store::open(&path).unwrap();
        store
            .put_experiment("x", &spec("c"), &json!({}), 1)
            .unwrap();
    }
    let versions: Vec<i64> = raw(&path)
        .prepare("SELECT version FROM schema_version ORDER BY version")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(versions, [1, 2, 3]);
    assert_eq!(
        Store::open(&path)
            .unwrap()
            .experiment("x")
            .unwrap()
            .unwrap()
            .revision,
        3
    );
}

#[test]
fn a_database_from_a_newer_schema_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = db(&dir);
    drop(Store::open(&path).unwrap());
    raw(&path)
        .execute("INSERT INTO schema_version (version) VALUES (99)", [])
        .unwrap();

    match Store::open(&path) {
        Err(StateError::SchemaTooNew {
            found: 99,
            supported: 3,
        }) => {}
        other => panic!("expected SchemaTooNew, got {other:?}"),
    }
}

#[test]
fn values_beyond_sqlite_integers_are_refused_not_wrapped() {
    let store = Store::open_in_memory().unwrap();
    assert!(matches!(
        store.put_experiment("x", &spec("c"), &json!({}), u64::MAX),
        Err(StateError::Sqlite(_))
    ));
    assert!(store.experiment("x").unwrap().is_none());
}

#[test]
fn store_can_be_shared_across_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Store>();
}

#[test]
fn feedback_sums_per_variant_over_a_range_and_refuses_bad_scores() {
    let store = Store::open_in_memory().unwrap();
    store
        .put_experiment("x", &spec("c"), &json!({}), 1)
        .unwrap();
    for (at, variant, score) in [
        (10, "a", 1.0),
        (20, "a", 0.5),
        (20, "b", 0.0),
        (30, "a", 1.0),
    ] {
        store
            .record_feedback("x", at, variant, score, Some("req-1"))
            .unwrap();
    }
    let totals = store.feedback_totals("x", 10, 30).unwrap();
    assert_eq!(
        totals,
        vec![
            ("a".to_owned(), 2, 1.5, 1.25),
            ("b".to_owned(), 1, 0.0, 0.0)
        ]
    );
    assert!(matches!(
        store.record_feedback("x", 40, "a", 1.5, None),
        Err(StateError::Invalid(_))
    ));
    assert!(matches!(
        store.record_feedback("nope", 40, "a", 0.5, None),
        Err(StateError::NotFound(_))
    ));
    store.delete_experiment("x", 50).unwrap();
    assert!(matches!(
        store.record_feedback("x", 60, "a", 0.5, None),
        Err(StateError::NotFound(_))
    ));
}

#[test]
fn a_file_from_before_decision_summaries_opens_and_keeps_its_decisions() {
    let dir = tempfile::tempdir().unwrap();
    let path = db(&dir);
    // A version-2 file, as the previous release wrote it: its migrations only.
    let conn = raw(&path);
    conn.execute_batch(
        "CREATE TABLE schema_version (version INTEGER NOT NULL PRIMARY KEY) STRICT;
         INSERT INTO schema_version (version) VALUES (1), (2);",
    )
    .unwrap();
    conn.execute_batch(include_str!("../src/schema/001_initial.sql"))
        .unwrap();
    conn.execute_batch(include_str!("../src/schema/002_feedback.sql"))
        .unwrap();
    conn.execute(
        "INSERT INTO experiments (id, spec, state, revision, created_at, updated_at)
         VALUES ('old', '{}', '{}', 2, 1, 2)",
        [],
    )
    .unwrap();
    conn.execute(
        "INSERT INTO decisions (experiment_id, seq, revision, at, kind, reason,
                                weights_before, weights_after, observations, applied)
         VALUES ('old', 1, 2, 2, 'rollback', 'the full old reason', '[90,10]', '[100,0]', '{}', 1)",
        [],
    )
    .unwrap();
    drop(conn);

    let store = Store::open(&path).unwrap();
    let decisions = store.decisions("old").unwrap();
    assert_eq!(decisions.len(), 1);
    let (seq, row, applied) = &decisions[0];
    assert_eq!((*seq, *applied), (1, true));
    assert_eq!(row.reason, "the full old reason");
    assert_eq!(row.summary, "");
    assert_eq!(row.weights_after, vec![100, 0]);

    // New decisions on the migrated file carry their summary.
    let state = store.experiment("old").unwrap().unwrap();
    let mut next = decision(3, "hold", [100, 0], [100, 0]);
    next.summary = "hold: not enough data".to_owned();
    store
        .record_decision("old", state.revision, &next, &json!({}))
        .unwrap();
    let decisions = Store::open(&path).unwrap().decisions("old").unwrap();
    assert_eq!(decisions[1].1.summary, "hold: not enough data");
}
