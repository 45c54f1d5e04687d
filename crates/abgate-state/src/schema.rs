//! Connection settings and idempotent migrations.

use std::collections::BTreeSet;
use std::time::Duration;

use rusqlite::{Connection, TransactionBehavior};

use crate::StateError;

/// The migrations, in order: migration `i` (0-based) takes the schema from version `i` to
/// `i + 1`. Append new ones; never edit one that has shipped, since databases already
/// carry its effect.
const MIGRATIONS: &[&str] = &[
    include_str!("schema/001_initial.sql"),
    include_str!("schema/002_feedback.sql"),
    include_str!("schema/003_decision_summary.sql"),
];

/// The schema version this build reads and writes.
pub(crate) const SCHEMA_VERSION: u64 = MIGRATIONS.len() as u64;

/// One row per applied migration, so that `open` knows which ones still have to run and a
/// person can see when each ran.
const SCHEMA_VERSION_TABLE: &str = "
CREATE TABLE IF NOT EXISTS schema_version (
    version INTEGER NOT NULL PRIMARY KEY
) STRICT;
";

/// How long a write waits for another connection's write lock (another process on the
/// same file, such as a second controller starting while the first drains) before it
/// fails with `SQLITE_BUSY`. Writes are tiny, so waiting is always better than failing.
pub(crate) const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Sets the per-connection pragmas.
pub(crate) fn configure(conn: &Connection) -> rusqlite::Result<()> {
    conn.busy_timeout(BUSY_TIMEOUT)?;
    // WAL: a commit appends to the log instead of rewriting pages in place, so a process
    // killed mid-commit leaves the last committed state intact (the torn tail of the log
    // is ignored on the next open), and readers (reports) never block the controller's
    // writes. The mode is stored in the file; setting it again is a no-op. Where WAL is
    // impossible (an in-memory database) SQLite keeps its rollback journal, which is
    // equally safe, only slower.
    conn.pragma_update_and_check(None, "journal_mode", "WAL", |_| Ok(()))?;
    // FULL, not WAL's usual NORMAL: NORMAL fsyncs the log only at checkpoints, so a
    // commit survives `kill -9` but may be lost on power failure. A decision is recorded
    // before it takes effect precisely so that it is never lost; the cost, one fsync per
    // commit, is paid a few times per controller interval, never on the request path.
    conn.pragma_update(None, "synchronous", "FULL")?;
    // SQLite leaves foreign keys off unless asked, per connection.
    conn.pragma_update(None, "foreign_keys", true)
}

/// Brings the schema up to [`SCHEMA_VERSION`]. Idempotent, and safe when two processes
/// open the same file at once: the check and the migrations run in one IMMEDIATE
/// transaction, so the second waits and then finds nothing left to do.
pub(crate) fn migrate(conn: &mut Connection) -> Result<(), StateError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    tx.execute_batch(SCHEMA_VERSION_TABLE)?;
    let found: u64 = tx.query_row(
        "SELECT COALESCE(MAX(version), 0) FROM schema_version",
        [],
        |row| row.get(0),
    )?;
    if found > SCHEMA_VERSION {
        // A newer abgate wrote this file; writing to it with an older schema's assumptions
        // could corrupt what the newer one relies on.
        return Err(StateError::SchemaTooNew {
            found,
            supported: SCHEMA_VERSION,
        });
    }
    for (version, sql) in (1..).zip(MIGRATIONS).skip_while(|(v, _)| *v <= found) {
        tx.execute_batch(sql)?;
        tx.execute(
            "INSERT INTO schema_version (version) VALUES (?1)",
            [version],
        )?;
    }
    tx.commit()?;
    Ok(())
}

/// The tables, with their columns, that abgate's schema has at `version`: the migrations
/// up to it, run on an empty in-memory database.
pub(crate) fn tables_at(version: u64) -> Result<Vec<(String, BTreeSet<String>)>, StateError> {
    let conn = Connection::open_in_memory()?;
    conn.execute_batch(SCHEMA_VERSION_TABLE)?;
    for sql in MIGRATIONS.iter().take(version as usize) {
        conn.execute_batch(sql)?;
    }
    Ok(crate::integrity::columns_of_tables(&conn)?)
}

/// Whether the database has abgate's `experiments` table (and so its others).
pub(crate) fn has_experiments_table(conn: &Connection) -> rusqlite::Result<bool> {
    conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = 'experiments')",
        [],
        |row| row.get(0),
    )
}
