//! Online backups with SQLite's backup API: consistent while the gateway writes.

use std::path::Path;
use std::time::{Duration, Instant};

use rusqlite::backup::{Backup, StepResult};
use rusqlite::Connection;

use crate::{file, integrity, schema, store, StateError};

/// What a backup holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackupSummary {
    /// Experiments not deleted.
    pub experiments: u64,
    /// Decisions, of all experiments.
    pub decisions: u64,
    /// The backup's size in bytes.
    pub bytes: u64,
}

/// How long a backup waits for a writer that holds the database locked.
const LOCKED_FOR_AT_MOST: Duration = Duration::from_secs(30);

/// Copies the state database at `source` to `destination` (replacing it): one
/// consistent snapshot, taken in a single read transaction, which in WAL mode does not
/// hold up the gateway's writes. The source is checked first as opening it is, and never
/// migrated or written. The copy is made under a temporary name (mode 0600), switched to
/// a rollback journal so that it is one self-contained file, checked, and then renamed
/// into place, so `destination` is never a partial backup.
pub fn backup(source: &Path, destination: &Path) -> Result<BackupSummary, StateError> {
    if !file::exists(source)? {
        return Err(file::io(
            source,
            std::io::Error::new(std::io::ErrorKind::NotFound, "no state file here"),
        ));
    }
    let from = store::open_existing(source)?;
    let temporary = file::temporary_beside(destination, "partial");
    file::create_private(&temporary)?;
    let copied = copy(&from, &temporary).and_then(|summary| {
        std::fs::rename(&temporary, destination).map_err(|e| file::io(destination, e))?;
        file::sync_directory(destination)?;
        Ok(summary)
    });
    if copied.is_err() {
        let _ = file::remove_database_files(&temporary);
    }
    copied
}

fn copy(from: &Connection, to_path: &Path) -> Result<BackupSummary, StateError> {
    let mut to = Connection::open(to_path)?;
    {
        let backup = Backup::new(from, &mut to)?;
        let started = Instant::now();
        // -1: every page in one step, so one read transaction sees one state.
        while backup.step(-1)? != StepResult::Done {
            if started.elapsed() > LOCKED_FOR_AT_MOST {
                return Err(StateError::Sqlite(rusqlite::Error::SqliteFailure(
                    rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_BUSY),
                    Some("the state database stayed locked; try again".to_owned()),
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    to.pragma_update_and_check(None, "journal_mode", "DELETE", |_| Ok(()))?;
    integrity::verify(&to, to_path)?;
    let count = |sql: &str| -> Result<u64, StateError> { Ok(to.query_row(sql, [], |r| r.get(0))?) };
    let has_tables = schema::has_experiments_table(&to)?;
    let summary = BackupSummary {
        experiments: if has_tables {
            count("SELECT COUNT(*) FROM experiments WHERE deleted_at IS NULL")?
        } else {
            0
        },
        decisions: if has_tables {
            count("SELECT COUNT(*) FROM decisions")?
        } else {
            0
        },
        bytes: 0,
    };
    to.close().map_err(|(_, e)| e)?;
    let bytes = std::fs::metadata(to_path)
        .map_err(|e| file::io(to_path, e))?
        .len();
    std::fs::File::open(to_path)
        .and_then(|f| f.sync_all())
        .map_err(|e| file::io(to_path, e))?;
    Ok(BackupSummary { bytes, ..summary })
}
