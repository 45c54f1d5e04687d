//! Creating database files whole and private.

use std::ffi::OsString;
use std::io::ErrorKind;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use rusqlite::Connection;

use crate::StateError;

/// Owner read and write only: the state holds experiment specs, gate URLs and reasons.
/// SQLite gives a database's `-wal` and `-shm` files the database file's mode.
pub(crate) const PRIVATE_MODE: u32 = 0o600;

/// Whether `path` exists (a dangling symlink counts: opening it must fail loudly, not
/// create a file elsewhere).
pub(crate) fn exists(path: &Path) -> Result<bool, StateError> {
    match std::fs::symlink_metadata(path) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
        Err(source) => Err(io(path, source)),
    }
}

/// `path` with `suffix` appended to its file name.
pub(crate) fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = OsString::from(path.as_os_str());
    name.push(suffix);
    PathBuf::from(name)
}

/// The database file and the `-wal` and `-shm` files SQLite keeps beside it.
pub(crate) fn database_files(path: &Path) -> [PathBuf; 3] {
    [
        path.to_owned(),
        with_suffix(path, "-wal"),
        with_suffix(path, "-shm"),
    ]
}

/// The `-wal` and `-shm` of a database that did not exist before a connection opened it,
/// so that a refused file can be left as it was found.
pub(crate) struct Companions {
    wal: Option<PathBuf>,
    shm: Option<PathBuf>,
}

impl Companions {
    /// Notes which of the `-wal` and `-shm` of `path` do not exist yet.
    pub(crate) fn before_opening(path: &Path) -> Self {
        let absent = |suffix| {
            let file = with_suffix(path, suffix);
            std::fs::symlink_metadata(&file).is_err().then_some(file)
        };
        Companions {
            wal: absent("-wal"),
            shm: absent("-shm"),
        }
    }

    /// Removes those the opening created: the log if still empty (nothing was written
    /// to it), and the index. Best effort: they are harmless if they stay.
    pub(crate) fn remove_those_opening_made(self) {
        if let Some(wal) = self.wal {
            if std::fs::metadata(&wal).is_ok_and(|m| m.len() == 0) {
                let _ = std::fs::remove_file(wal);
            }
        }
        if let Some(shm) = self.shm {
            let _ = std::fs::remove_file(shm);
        }
    }
}

/// A temporary name beside `path`, unique to this process.
pub(crate) fn temporary_beside(path: &Path, purpose: &str) -> PathBuf {
    with_suffix(path, &format!(".{purpose}-{}", std::process::id()))
}

/// Creates an empty file at `path` with [`PRIVATE_MODE`], replacing a leftover of an
/// earlier attempt (and that attempt's `-wal` and `-shm`).
pub(crate) fn create_private(path: &Path) -> Result<(), StateError> {
    remove_database_files(path)?;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(PRIVATE_MODE)
        .open(path)
        .map_err(|e| io(path, e))?;
    Ok(())
}

/// Removes a database file and its `-wal` and `-shm`, those that exist.
pub(crate) fn remove_database_files(path: &Path) -> Result<(), StateError> {
    for file in database_files(path) {
        match std::fs::remove_file(&file) {
            Err(e) if e.kind() != ErrorKind::NotFound => return Err(io(&file, e)),
            _ => {}
        }
    }
    Ok(())
}

/// Creates the database at `path`, built by `build` under a temporary name and closed
/// (which folds its log into the file) before it is linked into place: a crash leaves
/// either no file or a whole one, never an empty one that would pass for truncated.
/// When another process created `path` meanwhile, its file wins and ours is dropped.
pub(crate) fn create_database(
    path: &Path,
    build: impl FnOnce(&mut Connection) -> Result<(), StateError>,
) -> Result<(), StateError> {
    let temporary = temporary_beside(path, "creating");
    create_private(&temporary)?;
    let built = (|| {
        let mut conn = Connection::open(&temporary)?;
        build(&mut conn)?;
        conn.close().map_err(|(_, e)| e)?;
        Ok(())
    })();
    let placed = built.and_then(|()| match std::fs::hard_link(&temporary, path) {
        Ok(()) => sync_directory(path),
        Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(io(path, e)),
    });
    let removed = remove_database_files(&temporary);
    placed.and(removed)
}

/// Makes a rename or link in `path`'s directory durable.
pub(crate) fn sync_directory(path: &Path) -> Result<(), StateError> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io(dir, e))
}

pub(crate) fn io(path: &Path, source: std::io::Error) -> StateError {
    StateError::Io {
        path: path.to_owned(),
        source,
    }
}
