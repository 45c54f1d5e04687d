//! Refuses a state file that is damaged or not abgate's before anything reads from it:
//! SQLite would otherwise open a truncated file as an empty database, and replay a
//! damaged log only up to the damage, in both cases without a word.

use std::collections::BTreeSet;
use std::io::Read as _;
use std::path::Path;

use rusqlite::{Connection, ErrorCode};

use crate::{schema, wal, StateError};

/// The first 16 bytes of every SQLite database file.
const SQLITE_MAGIC: &[u8; 16] = b"SQLite format 3\0";
/// Length of the database header; a shorter file is cut short.
const HEADER_LEN: u64 = 100;
/// How many of `integrity_check`'s findings an error quotes.
const FINDINGS_QUOTED: usize = 5;

/// What can be checked before SQLite opens the file: that it is an SQLite database at all,
/// whole enough to have a header, and that its write-ahead log is not damaged.
pub(crate) fn preflight(path: &Path) -> Result<(), StateError> {
    let io = |source| StateError::Io {
        path: path.to_owned(),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(io)?;
    let len = file.metadata().map_err(io)?.len();
    if len == 0 {
        return Err(corrupt(path, "it is empty (0 bytes): truncated"));
    }
    let mut magic = Vec::with_capacity(SQLITE_MAGIC.len());
    (&mut file)
        .take(SQLITE_MAGIC.len() as u64)
        .read_to_end(&mut magic)
        .map_err(io)?;
    if !SQLITE_MAGIC.starts_with(&magic) {
        return Err(foreign(path, "it is not an SQLite database"));
    }
    if len < HEADER_LEN {
        return Err(corrupt(
            path,
            &format!("it is {len} bytes, shorter than a database header: truncated"),
        ));
    }
    wal::check(path).map_err(|damage| {
        corrupt(
            path,
            &format!(
                "its write-ahead log ({}-wal) is damaged: {damage}",
                path.display()
            ),
        )
    })
}

/// What needs SQLite: every page and index consistent (`PRAGMA integrity_check`), the
/// tables and columns abgate's schema has at the file's version, and every stored
/// document valid JSON. An SQLite database with no tables at all passes (it is new).
pub(crate) fn verify(conn: &Connection, path: &Path) -> Result<(), StateError> {
    let findings = conn
        .prepare("PRAGMA integrity_check")
        .and_then(|mut stmt| {
            stmt.query_map([], |row| row.get::<_, String>(0))?
                .collect::<Result<Vec<_>, _>>()
        })
        .map_err(|e| sqlite_damage(path, e))?;
    if findings != ["ok"] {
        let quoted: Vec<&str> = findings
            .iter()
            .take(FINDINGS_QUOTED)
            .map(String::as_str)
            .collect();
        return Err(corrupt(
            path,
            &format!(
                "SQLite's integrity check found {} problem(s): {}",
                findings.len(),
                quoted.join("; ")
            ),
        ));
    }
    let tables = columns_of_tables(conn).map_err(|e| sqlite_damage(path, e))?;
    if tables.is_empty() {
        return Ok(());
    }
    let Some(version) = stored_version(conn, &tables).map_err(|e| sqlite_damage(path, e))? else {
        let names: Vec<&str> = tables.iter().map(|(name, _)| name.as_str()).collect();
        return Err(foreign(
            path,
            &format!(
                "it is another program's database (tables {}), not abgate's",
                names.join(", ")
            ),
        ));
    };
    if version > schema::SCHEMA_VERSION {
        // Opening goes on to refuse it as written by a newer abgate.
        return Ok(());
    }
    let expected = schema::tables_at(version)?;
    for (table, columns) in &expected {
        let Some((_, found)) = tables.iter().find(|(name, _)| name == table) else {
            return Err(foreign(
                path,
                &format!("it lacks the table {table} of abgate's schema version {version}"),
            ));
        };
        if let Some(missing) = columns.difference(found).next() {
            return Err(foreign(
                path,
                &format!("its table {table} lacks the column {missing} of abgate's schema version {version}"),
            ));
        }
    }
    if version == 0 {
        return Ok(());
    }
    if let Some(id) = invalid_document(conn).map_err(|e| sqlite_damage(path, e))? {
        return Err(corrupt(
            path,
            &format!("a stored document of experiment {id:?} is not valid JSON"),
        ));
    }
    Ok(())
}

/// Every table but SQLite's own, with its columns.
pub(crate) fn columns_of_tables(
    conn: &Connection,
) -> rusqlite::Result<Vec<(String, BTreeSet<String>)>> {
    let names: Vec<String> = conn
        .prepare(
            "SELECT name FROM sqlite_schema
             WHERE type = 'table' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' ORDER BY name",
        )?
        .query_map([], |row| row.get(0))?
        .collect::<Result<_, _>>()?;
    names
        .into_iter()
        .map(|name| {
            let columns = conn
                .prepare("SELECT name FROM pragma_table_info(?1)")?
                .query_map([&name], |row| row.get(0))?
                .collect::<Result<BTreeSet<String>, _>>()?;
            Ok((name, columns))
        })
        .collect()
}

/// The schema version recorded in the file; `None` when it has no version table, so was
/// not written by abgate.
fn stored_version(
    conn: &Connection,
    tables: &[(String, BTreeSet<String>)],
) -> rusqlite::Result<Option<u64>> {
    if !tables.iter().any(|(name, _)| name == "schema_version") {
        return Ok(None);
    }
    conn.query_row(
        "SELECT COALESCE(MAX(version), 0) FROM schema_version",
        [],
        |row| row.get(0),
    )
    .map(Some)
}

/// The id of an experiment whose spec, state or one of whose decisions is not valid JSON.
/// The integrity check sees a page's structure, not its contents: bytes overwritten
/// inside a document show here.
fn invalid_document(conn: &Connection) -> rusqlite::Result<Option<String>> {
    use rusqlite::OptionalExtension as _;
    conn.query_row(
        "SELECT id FROM experiments WHERE NOT json_valid(spec) OR NOT json_valid(state)
         UNION ALL
         SELECT experiment_id FROM decisions
         WHERE NOT json_valid(weights_before) OR NOT json_valid(weights_after)
            OR NOT json_valid(observations)
         LIMIT 1",
        [],
        |row| row.get(0),
    )
    .optional()
}

/// A SQLite error met while checking or opening an existing file: damage when SQLite says
/// so, else the error as it is.
pub(crate) fn sqlite_damage(path: &Path, error: rusqlite::Error) -> StateError {
    match error.sqlite_error_code() {
        Some(ErrorCode::DatabaseCorrupt) => {
            corrupt(path, &format!("SQLite cannot read it ({error})"))
        }
        Some(ErrorCode::NotADatabase) => foreign(path, &error.to_string()),
        _ => StateError::Sqlite(error),
    }
}

fn corrupt(path: &Path, problem: &str) -> StateError {
    StateError::Corrupt {
        path: path.to_owned(),
        problem: problem.to_owned(),
    }
}

fn foreign(path: &Path, problem: &str) -> StateError {
    StateError::Foreign {
        path: path.to_owned(),
        problem: problem.to_owned(),
    }
}
