//! The store's error type.

use std::path::PathBuf;

/// Why a [`Store`](crate::Store) call failed.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// SQLite refused the operation (I/O error, full disk, a lock held past the busy
    /// timeout, a value out of range such as a timestamp beyond `i64::MAX`).
    #[error("experiment state database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A stored document is not valid JSON, or not of the shape asked for.
    #[error("experiment state document: {0}")]
    Json(#[from] serde_json::Error),
    /// The experiment changed since the caller read it: its revision is `found`, not
    /// `expected`. Nothing was written; re-read the experiment and decide again.
    #[error(
        "experiment {id:?} is at revision {found}, not {expected}: it changed since it was read"
    )]
    Conflict {
        /// The experiment.
        id: String,
        /// The revision the caller computed its decision from.
        expected: u64,
        /// The revision stored.
        found: u64,
    },
    /// The experiment (or decision) does not exist, or the experiment was deleted and so
    /// takes no more decisions or analyses.
    #[error("{0} not found")]
    NotFound(String),
    /// A value the store refuses (a feedback score outside [0, 1]).
    #[error("{0}")]
    Invalid(String),
    /// The database was written by a newer abgate whose schema this build does not know;
    /// writing to it could break what the newer version relies on.
    #[error("experiment state database has schema version {found}; this build supports up to {supported}")]
    SchemaTooNew {
        /// The schema version in the file.
        found: u64,
        /// The newest schema version this build knows.
        supported: u64,
    },
    /// The state file is damaged: cut short, overwritten, or its write-ahead log is.
    /// Nothing was read from it or written to it.
    #[error("the experiment state file {} is damaged: {problem}", path.display())]
    Corrupt {
        /// The state file.
        path: PathBuf,
        /// What is wrong, in a sentence.
        problem: String,
    },
    /// The file is not abgate's state: not an SQLite database, or another program's.
    /// Nothing was written to it.
    #[error("{} is not an abgate experiment state file: {problem}", path.display())]
    Foreign {
        /// The file.
        path: PathBuf,
        /// Why not, in a sentence.
        problem: String,
    },
    /// A file operation on the state file (or a backup) failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}
