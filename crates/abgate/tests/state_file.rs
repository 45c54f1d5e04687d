//! The experiment state file as `abgate serve` and `abgate state backup` use it: a file
//! cut short, overwritten, with garbage in its write-ahead log, or not abgate's stops
//! startup with what to do; `--state-reset` moves it aside and starts empty; the state
//! and token files are private; the log is folded into the main file while the gateway
//! runs; a backup taken from a running gateway holds its experiments and restores.

#![cfg(unix)]

mod common;

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{free_port, run, start_gateway, write_mesh, CliOutput, Gateway, Processes};
use serde_json::json;

/// Set in the child's environment to a state path: runs the log writer.
const WAL_CHILD_ENV: &str = "ABGATE_TEST_WAL_WRITER_DB";

/// A config directory (the seed's mesh; its endpoints need not answer: nothing here
/// sends a request through the gateway) and a state directory, in `dir`.
fn layout(dir: &Path) -> (PathBuf, PathBuf) {
    let config = dir.join("config");
    let state_dir = dir.join("state");
    std::fs::create_dir(&config).expect("config dir");
    std::fs::create_dir(&state_dir).expect("state dir");
    write_mesh(&config, free_port(), free_port(), false, "");
    (config, state_dir.join("state.db"))
}

/// An experiment as the admin API takes it.
fn experiment(id: &str) -> String {
    json!({"id": id, "traffic_split": {"v1-0": 80, "v1-1": 20}}).to_string()
}

fn create(gw: &Gateway, id: &str) {
    let (status, body) = gw.post("/api/v1/experiments", &experiment(id));
    assert_eq!(status, 200, "{body}");
}

/// The ids of the experiments the API lists.
fn listed(gw: &Gateway) -> Vec<String> {
    let (status, list) = gw.get("/api/v1/experiments");
    assert_eq!(status, 200, "{list}");
    let mut ids: Vec<String> = list
        .as_array()
        .expect("a list")
        .iter()
        .map(|e| e["id"].as_str().expect("id").to_owned())
        .collect();
    ids.sort();
    ids
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .expect("metadata")
        .permissions()
        .mode()
        & 0o777
}

/// A state file as a gateway leaves it: experiments `a` and `b` created through the API,
/// `a` deleted, the gateway stopped.
fn used_state(dir: &Path) -> (PathBuf, PathBuf) {
    let (config, state) = layout(dir);
    let mut processes = Processes::new(dir);
    let gw = start_gateway(&mut processes, "first", &config, &state, &[]);
    create(&gw, "a");
    create(&gw, "b");
    let (status, body) = gw.api_as("DELETE", "/api/v1/experiments/a", Some(&gw.token()), "");
    assert_eq!(status, 200, "{body}");
    assert_eq!(listed(&gw), ["b"]);
    processes.stop(gw.index);
    (config, state)
}

/// Runs `abgate serve` on `state` expecting it to refuse to start.
fn serve_refused(config: &Path, state: &Path) -> CliOutput {
    let mut command = Command::new(env!("CARGO_BIN_EXE_abgate"));
    command
        .arg("serve")
        .arg("-f")
        .arg(config)
        .args(["--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
        .arg("--state")
        .arg(state);
    let out = run(command, Duration::from_secs(30));
    assert_ne!(out.code, Some(0), "{out:#?}");
    assert!(out.code.is_some(), "exited, not killed: {out:#?}");
    out
}

/// The refusal names the file and both ways out, and leaves the file as it was.
fn assert_refused(config: &Path, state: &Path, why: &str) {
    let before = std::fs::read(state).expect("state file");
    let out = serve_refused(config, state);
    let shown = state.display().to_string();
    for wanted in [shown.as_str(), why, "--state-reset", "restore a backup"] {
        assert!(out.stderr.contains(wanted), "{wanted:?} in {out:#?}");
    }
    assert!(!out.stdout.contains("listening admin"), "{out:#?}");
    assert!(
        std::fs::read(state).expect("state file") == before,
        "the refused file was changed"
    );
}

#[test]
fn a_truncated_state_file_stops_startup() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (config, state) = used_state(dir.path());
    let len = std::fs::metadata(&state).expect("state").len();
    assert!(len > 4 * 4096, "several pages: {len}");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&state)
        .and_then(|f| f.set_len(len / 2))
        .expect("truncated");
    assert_refused(&config, &state, "is damaged");
}

#[test]
fn a_state_file_overwritten_in_its_middle_stops_startup() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (config, state) = used_state(dir.path());
    let mut bytes = std::fs::read(&state).expect("state");
    let middle = bytes.len() / 2 / 4096 * 4096;
    bytes[middle..middle + 100].fill(0x5a);
    std::fs::write(&state, &bytes).expect("overwritten");
    assert_refused(&config, &state, "is damaged");
}

/// The child: commits experiments and a deletion through the state store, as the
/// gateway would, and dies before any checkpoint, leaving them in the log.
fn wal_writer_child(path: &std::ffi::OsStr) {
    let store = abgate_state::Store::open(Path::new(path)).expect("open");
    for i in 0..20 {
        let id = format!("kept{i}");
        store
            .put_experiment(&id, &json!({"id": id}), &json!({}), 1)
            .expect("put");
    }
    store
        .put_experiment("gone", &json!({}), &json!({}), 1)
        .expect("put");
    assert!(store.delete_experiment("gone", 2).expect("delete"));
    std::process::abort();
}

#[test]
fn garbage_in_the_write_ahead_log_stops_startup() {
    if let Some(path) = std::env::var_os(WAL_CHILD_ENV) {
        return wal_writer_child(&path);
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let (config, state) = layout(dir.path());
    let status = Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "garbage_in_the_write_ahead_log_stops_startup",
            "--exact",
            "--test-threads=1",
        ])
        .env(WAL_CHILD_ENV, &state)
        .status()
        .expect("child runs");
    assert!(!status.success(), "the writer aborts");
    let wal = with_suffix(&state, "-wal");
    let mut log = std::fs::read(&wal).expect("the writer left its log");
    let middle = log.len() / 2;
    log[middle..middle + 32].fill(0xee);
    std::fs::write(&wal, &log).expect("garbage written");
    assert_refused(&config, &state, "write-ahead log");
    assert!(
        std::fs::read(&wal).expect("log") == log,
        "the log is untouched"
    );
}

#[test]
fn a_foreign_sqlite_database_or_another_file_stops_startup() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (config, state) = layout(dir.path());
    let foreign = foreign_database();
    std::fs::write(&state, foreign).expect("foreign database written");
    assert_refused(&config, &state, "not an abgate experiment state file");

    std::fs::write(&state, "not a database at all\n").expect("written");
    assert_refused(&config, &state, "not an SQLite database");
}

/// Another program's SQLite database.
fn foreign_database() -> Vec<u8> {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("other.db");
    let conn = rusqlite::Connection::open(&path).expect("open");
    conn.execute_batch(
        "CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT);
         INSERT INTO users (name) VALUES ('ada');",
    )
    .expect("tables");
    drop(conn);
    std::fs::read(&path).expect("foreign database")
}

#[test]
fn state_reset_moves_the_file_aside_and_starts_empty() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (config, state) = used_state(dir.path());
    let len = std::fs::metadata(&state).expect("state").len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&state)
        .and_then(|f| f.set_len(len / 2))
        .expect("truncated");
    let damaged = std::fs::read(&state).expect("state");
    serve_refused(&config, &state);

    let mut processes = Processes::new(dir.path());
    let gw = start_gateway(&mut processes, "reset", &config, &state, &["--state-reset"]);
    assert!(listed(&gw).is_empty());
    create(&gw, "fresh");
    assert_eq!(listed(&gw), ["fresh"]);
    processes.stop(gw.index);

    let log = std::fs::read_to_string(dir.path().join("reset.log")).expect("log");
    let aside: Vec<PathBuf> = std::fs::read_dir(state.parent().expect("state dir"))
        .expect("state dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| {
            let name = p.file_name().expect("name").to_string_lossy().into_owned();
            name.starts_with("state.db.reset-")
                && !name.ends_with("-wal")
                && !name.ends_with("-shm")
        })
        .collect();
    assert_eq!(aside.len(), 1, "{aside:?}");
    assert!(
        std::fs::read(&aside[0]).expect("aside") == damaged,
        "kept as it was"
    );
    assert!(
        log.contains(&aside[0].display().to_string()),
        "says where: {log}"
    );
}

#[test]
fn the_state_files_and_the_generated_token_are_private() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("config");
    std::fs::create_dir(&config).expect("config dir");
    write_mesh(&config, free_port(), free_port(), false, "");
    let state_dir = dir.path().join("new/state");
    let state = state_dir.join("state.db");
    let mut processes = Processes::new(dir.path());
    let gw = start_gateway(&mut processes, "gateway", &config, &state, &[]);
    create(&gw, "a");
    assert_eq!(mode(&state), 0o600);
    for suffix in ["-wal", "-shm"] {
        let file = with_suffix(&state, suffix);
        if file.exists() {
            assert_eq!(mode(&file), 0o600, "{}", file.display());
        }
    }
    assert_eq!(mode(&gw.token_file), 0o600);
    assert_eq!(mode(&state_dir), 0o700);
    processes.stop(gw.index);

    // A token file left readable by others is made private when a token is written to it.
    std::fs::set_permissions(&gw.token_file, std::fs::Permissions::from_mode(0o644))
        .expect("chmod");
    let gw = start_gateway(&mut processes, "again", &config, &state, &[]);
    assert_eq!(mode(&gw.token_file), 0o600);
    assert_eq!(listed(&gw), ["a"]);
}

/// Polls until `path` is empty or gone, at most 10 s.
fn wait_until_empty(path: &Path) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::metadata(path).map(|m| m.len()).unwrap_or(0) > 0 {
        assert!(
            Instant::now() < deadline,
            "{} never emptied",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_running_gateway_folds_its_log_into_the_main_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (config, state) = layout(dir.path());
    let mut processes = Processes::new(dir.path());
    let gw = start_gateway(&mut processes, "gateway", &config, &state, &[]);
    create(&gw, "a");
    create(&gw, "b");
    wait_until_empty(&with_suffix(&state, "-wal"));

    // The main file alone, copied while the gateway runs, holds both.
    let copy_dir = tempfile::tempdir().expect("tempdir");
    let copy = copy_dir.path().join("state.db");
    std::fs::copy(&state, &copy).expect("copied");
    let store = abgate_state::Store::open(&copy).expect("the copy opens");
    let ids: Vec<String> = store
        .experiments()
        .expect("experiments")
        .into_iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(ids, ["a", "b"]);
}

fn backup_cli(args: &[&std::ffi::OsStr]) -> CliOutput {
    let mut command = Command::new(env!("CARGO_BIN_EXE_abgate"));
    command.args(["state", "backup"]).args(args);
    run(command, Duration::from_secs(30))
}

#[test]
fn a_backup_of_a_running_gateway_holds_its_experiments_and_restores() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (config, state) = layout(dir.path());
    let mut processes = Processes::new(dir.path());
    let gw = start_gateway(&mut processes, "gateway", &config, &state, &[]);
    create(&gw, "a");
    create(&gw, "b");

    let backup = dir.path().join("backups/state-backup.db");
    std::fs::create_dir(backup.parent().expect("dir")).expect("backup dir");
    let out = backup_cli(&[backup.as_os_str(), "--state".as_ref(), state.as_os_str()]);
    assert_eq!(out.code, Some(0), "{out:#?}");
    assert!(out.stdout.contains("2 experiment(s)"), "{out:#?}");
    assert_eq!(mode(&backup), 0o600);

    // The backup opens on its own and holds both, with what a restart rebuilds them from.
    let copy_dir = tempfile::tempdir().expect("tempdir");
    let copy = copy_dir.path().join("state.db");
    std::fs::copy(&backup, &copy).expect("copied");
    let store = abgate_state::Store::open(&copy).expect("the backup opens");
    let stored = store.experiments().expect("experiments");
    let ids: Vec<&str> = stored.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids, ["a", "b"]);
    assert!(stored.iter().all(|e| e.spec.get("resource").is_some()));
    drop(store);

    // Later changes, then a restore: stop, copy the backup over, start.
    create(&gw, "c");
    let (status, body) = gw.api_as("DELETE", "/api/v1/experiments/a", Some(&gw.token()), "");
    assert_eq!(status, 200, "{body}");
    assert_eq!(listed(&gw), ["b", "c"]);
    processes.stop(gw.index);
    std::fs::copy(&backup, &state).expect("restored");
    for suffix in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(with_suffix(&state, suffix));
    }
    let gw = start_gateway(&mut processes, "restored", &config, &state, &[]);
    assert_eq!(listed(&gw), ["a", "b"]);
}

#[test]
fn backing_up_without_a_state_file_fails_and_writes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("missing.db");
    let backup = dir.path().join("backup.db");
    let out = backup_cli(&[backup.as_os_str(), "--state".as_ref(), missing.as_os_str()]);
    assert_eq!(out.code, Some(1), "{out:#?}");
    assert!(out.stderr.contains("no state file"), "{out:#?}");
    assert!(!backup.exists() && !missing.exists());
}
