//! A state file that is damaged or not abgate's is refused before anything reads it;
//! new files are private; checkpoints leave the main file whole; backups are consistent.

#![cfg(unix)]

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use abgate_state::{backup, StateError, Store};
use serde_json::json;

/// Set in the child's environment to the database path: runs the log writer.
const WAL_CHILD_ENV: &str = "ABGATE_STATE_WAL_CHILD_DB";

fn db(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("state.db")
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// A store holding `n` experiments of about 1 KB each (several pages), checkpointed
/// into its main file and closed.
fn filled(path: &Path, n: usize) {
    let store = Store::open(path).unwrap();
    for i in 0..n {
        let spec = json!({"marker": format!("experiment-{i:04}"), "pad": "x".repeat(1000)});
        store
            .put_experiment(&format!("e{i:04}"), &spec, &json!({"phase": "running"}), 1)
            .unwrap();
    }
    assert!(store.checkpoint().unwrap());
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn expect_corrupt(path: &Path, wanted: &str) {
    match Store::open(path) {
        Err(StateError::Corrupt {
            path: named,
            problem,
        }) => {
            assert_eq!(named, path);
            assert!(problem.contains(wanted), "{problem}");
        }
        other => panic!("expected Corrupt({wanted}), got {other:?}"),
    }
}

#[test]
fn a_truncated_file_is_refused_and_left_as_it_is() {
    let dir = tempfile::tempdir().unwrap();
    let path = db(&dir);
    filled(&path, 40);
    let len = std::fs::metadata(&path).unwrap().len();
    let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    file.set_len(len / 2).unwrap();
    drop(file);

    expect_corrupt(&path, "SQLite");
    let err = Store::open(&path).unwrap_err().to_string();
    assert!(err.contains(&path.display().to_string()), "{err}");
    assert_eq!(std::fs::metadata(&path).unwrap().len(), len / 2);
    assert!(
        !with_suffix(&path, "-wal").exists() && !with_suffix(&path, "-shm").exists(),
        "refusing made no log or index beside it"
    );
}

#[test]
fn an_empty_or_headless_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = db(&dir);
    filled(&path, 1);
    let whole = std::fs::read(&path).unwrap();
    std::fs::write(&path, &whole[..50]).unwrap();
    expect_corrupt(&path, "shorter than a database header");
    std::fs::write(&path, &whole[..7]).unwrap();
    expect_corrupt(&path, "shorter than a database header");
    std::fs::write(&path, b"").unwrap();
    expect_corrupt(&path, "empty");
}

#[test]
fn a_page_overwritten_in_the_middle_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = db(&dir);
    filled(&path, 40);
    let mut bytes = std::fs::read(&path).unwrap();
    let page = 4096;
    let middle = bytes.len() / 2 / page * page;
    for (i, b) in bytes[middle..middle + 64].iter_mut().enumerate() {
        *b = (i as u8).wrapping_mul(37) ^ 0xa5;
    }
    std::fs::write(&path, &bytes).unwrap();
    expect_corrupt(&path, "SQLite");
}

#[test]
fn bytes_overwritten_inside_a_document_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = db(&dir);
    filled(&path, 5);
    let mut bytes = std::fs::read(&path).unwrap();
    let marker = b"experiment-0003";
    let at = bytes
        .windows(marker.len())
        .position(|w| w == marker)
        .expect("the document is in the main file");
    // A quote inside the string: the page is sound, the JSON is not.
    bytes[at + 3] = b'"';
    std::fs::write(&path, &bytes).unwrap();
    expect_corrupt(&path, "experiment \"e0003\"");
}

/// What the child does: commits many small transactions, the last one deleting `gone`,
/// then dies without closing, leaving them all in the write-ahead log.
fn wal_writer_child(path: &std::ffi::OsStr) {
    let store = Store::open(Path::new(path)).unwrap();
    assert!(store.checkpoint().unwrap());
    for i in 0..20 {
        store
            .put_experiment(&format!("kept{i}"), &json!({"i": i}), &json!({}), 1)
            .unwrap();
    }
    store
        .put_experiment("gone", &json!({}), &json!({}), 1)
        .unwrap();
    assert!(store.delete_experiment("gone", 2).unwrap());
    std::process::abort();
}

/// Runs [`wal_writer_child`] on `path` in a child process (this test binary again).
fn write_log_and_die(path: &Path) {
    let status = Command::new(std::env::current_exe().unwrap())
        .args([
            "garbage_in_the_log_is_refused_instead_of_dropping_later_commits",
            "--exact",
            "--test-threads=1",
        ])
        .env(WAL_CHILD_ENV, path)
        .status()
        .unwrap();
    assert!(!status.success(), "the child aborts");
}

#[test]
fn garbage_in_the_log_is_refused_instead_of_dropping_later_commits() {
    if let Some(path) = std::env::var_os(WAL_CHILD_ENV) {
        return wal_writer_child(&path);
    }
    let dir = tempfile::tempdir().unwrap();
    let path = db(&dir);
    write_log_and_die(&path);
    let wal = with_suffix(&path, "-wal");
    let log = std::fs::read(&wal).unwrap();
    assert!(log.len() > 10 * 4096, "the commits are in the log");

    // Undamaged, the log is replayed whole: the deletion holds.
    let intact = tempfile::tempdir().unwrap();
    let copy = db(&intact);
    std::fs::copy(&path, &copy).unwrap();
    std::fs::copy(&wal, with_suffix(&copy, "-wal")).unwrap();
    let store = Store::open(&copy).unwrap();
    assert_eq!(store.experiments().unwrap().len(), 20);
    assert!(store.experiment("gone").unwrap().unwrap().deleted);

    // Garbage in its middle: SQLite alone would stop there and bring "gone" back.
    let mut damaged = log.clone();
    let middle = damaged.len() / 2;
    damaged[middle..middle + 16].copy_from_slice(b"garbage garbage!");
    std::fs::write(&wal, &damaged).unwrap();
    expect_corrupt(&path, "write-ahead log");
    assert!(std::fs::read(&wal).unwrap() == damaged, "left as it is");

    // A torn tail (the last transaction, the deletion, cut short by a crash) is not
    // damage: that transaction never committed.
    let frame = 24 + 4096;
    let torn = &log[..log.len() - frame / 2];
    std::fs::write(&wal, torn).unwrap();
    let store = Store::open(&path).unwrap();
    assert_eq!(store.experiments().unwrap().len(), 21);
    assert!(!store.experiment("gone").unwrap().unwrap().deleted);
}

#[test]
fn a_foreign_sqlite_database_is_refused_and_not_written() {
    let dir = tempfile::tempdir().unwrap();
    let path = db(&dir);
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute_batch("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT); INSERT INTO users (name) VALUES ('ada');")
        .unwrap();
    drop(conn);
    let before = std::fs::read(&path).unwrap();

    match Store::open(&path) {
        Err(StateError::Foreign { problem, .. }) => {
            assert!(problem.contains("users"), "{problem}")
        }
        other => panic!("expected Foreign, got {other:?}"),
    }
    assert!(std::fs::read(&path).unwrap() == before, "written to");
    assert!(!with_suffix(&path, "-wal").exists());
}

#[test]
fn a_file_that_is_not_sqlite_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = db(&dir);
    std::fs::write(
        &path,
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\n",
    )
    .unwrap();
    match Store::open(&path) {
        Err(StateError::Foreign { problem, .. }) => {
            assert!(problem.contains("not an SQLite database"), "{problem}")
        }
        other => panic!("expected Foreign, got {other:?}"),
    }
}

#[test]
fn an_abgate_database_missing_a_table_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = db(&dir);
    filled(&path, 1);
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute_batch("DROP TABLE feedback").unwrap();
    drop(conn);
    match Store::open(&path) {
        Err(StateError::Foreign { problem, .. }) => {
            assert!(problem.contains("feedback"), "{problem}")
        }
        other => panic!("expected Foreign, got {other:?}"),
    }
}

#[test]
fn an_sqlite_database_without_tables_is_taken_as_new() {
    let dir = tempfile::tempdir().unwrap();
    let path = db(&dir);
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute_batch("PRAGMA user_version = 0; VACUUM;")
        .unwrap();
    drop(conn);
    let store = Store::open(&path).unwrap();
    store
        .put_experiment("a", &json!({}), &json!({}), 1)
        .unwrap();
}

#[test]
fn a_new_state_file_and_its_log_are_private() {
    let dir = tempfile::tempdir().unwrap();
    let path = db(&dir);
    let store = Store::open(&path).unwrap();
    store
        .put_experiment("a", &json!({}), &json!({}), 1)
        .unwrap();
    assert_eq!(mode(&path), 0o600);
    assert_eq!(mode(&with_suffix(&path, "-wal")), 0o600);
    assert_eq!(mode(&with_suffix(&path, "-shm")), 0o600);
    // Nothing left of the creation under its temporary name.
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        names
            .iter()
            .all(|n| n.starts_with("state.db") && !n.contains("creating")),
        "{names:?}"
    );
}

#[test]
fn a_checkpoint_leaves_the_whole_state_in_the_main_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = db(&dir);
    let store = Store::open(&path).unwrap();
    store
        .put_experiment("a", &json!({"n": 1}), &json!({}), 1)
        .unwrap();
    store
        .put_experiment("b", &json!({"n": 2}), &json!({}), 1)
        .unwrap();
    assert!(store.delete_experiment("a", 2).unwrap());
    let wal = with_suffix(&path, "-wal");
    assert!(std::fs::metadata(&wal).unwrap().len() > 0);

    assert!(store.checkpoint().unwrap());
    assert_eq!(std::fs::metadata(&wal).unwrap().len(), 0);

    // The main file alone, copied while the store is open, is the whole state.
    let elsewhere = tempfile::tempdir().unwrap();
    let copy = db(&elsewhere);
    std::fs::copy(&path, &copy).unwrap();
    let reopened = Store::open(&copy).unwrap();
    let ids: Vec<String> = reopened
        .experiments()
        .unwrap()
        .into_iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(ids, ["b"]);
    assert!(reopened.experiment("a").unwrap().unwrap().deleted);
}

#[test]
fn a_backup_taken_while_another_connection_writes_is_consistent_and_private() {
    let dir = tempfile::tempdir().unwrap();
    let path = db(&dir);
    filled(&path, 10);
    let store = Store::open(&path).unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (store, stop) = (store.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                store
                    .put_experiment(&format!("w{n}"), &json!({"n": n}), &json!({}), 1)
                    .unwrap();
                n += 1;
            }
            n
        })
    };
    let target = dir.path().join("backup.db");
    let summary = backup(&path, &target).unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let written = writer.join().unwrap();

    assert!(summary.experiments >= 10, "{summary:?}");
    assert!(summary.experiments <= 10 + written as u64, "{summary:?}");
    assert_eq!(summary.bytes, std::fs::metadata(&target).unwrap().len());
    assert_eq!(mode(&target), 0o600);
    // One self-contained file: rollback journal, no log beside it.
    let raw = rusqlite::Connection::open(&target).unwrap();
    let journal: String = raw
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(journal, "delete");
    drop(raw);
    let restored = Store::open(&target).unwrap();
    assert_eq!(
        restored.experiments().unwrap().len() as u64,
        summary.experiments
    );
    assert!(restored.experiment("e0009").unwrap().is_some());
}

#[test]
fn backing_up_a_missing_or_damaged_file_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("backup.db");
    let missing = backup(&dir.path().join("nothing.db"), &target).unwrap_err();
    assert!(matches!(missing, StateError::Io { .. }), "{missing:?}");
    assert!(!dir.path().join("nothing.db").exists());

    let path = db(&dir);
    filled(&path, 40);
    let len = std::fs::metadata(&path).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    assert!(matches!(
        backup(&path, &target),
        Err(StateError::Corrupt { .. })
    ));
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["state.db"]);
}
