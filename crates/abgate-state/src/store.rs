//! The store: one SQLite connection and the operations the controller needs.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use rusqlite::config::DbConfig;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension, TransactionBehavior};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::{file, integrity, schema, StateError};

/// Durable experiment state in one SQLite database.
///
/// `Send + Sync`: the connection sits behind a mutex; clones share it (so that a timer
/// can [checkpoint](Store::checkpoint) the store the controller owns). Every write is one
/// transaction committed with an fsync before the call returns.
#[derive(Debug, Clone)]
pub struct Store {
    conn: Arc<Mutex<Connection>>,
    /// The connection's change count at the last complete checkpoint.
    checkpointed_at: Arc<AtomicU64>,
}

/// An experiment as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredExperiment {
    /// The experiment's id (its key).
    pub id: String,
    /// The spec document, as last put.
    pub spec: serde_json::Value,
    /// The state document, as last put or left by the last decision.
    pub state: serde_json::Value,
    /// Bumped by every write; what [`Store::record_decision`] checks.
    pub revision: u64,
    /// When the id was first put, in ms since the Unix epoch.
    pub created_at: u64,
    /// When the row last changed, in ms since the Unix epoch.
    pub updated_at: u64,
    /// Soft-deleted: hidden from [`Store::experiments`], its history kept.
    pub deleted: bool,
}

impl StoredExperiment {
    /// The spec document read as `T`.
    pub fn spec_as<T: DeserializeOwned>(&self) -> Result<T, StateError> {
        Ok(T::deserialize(&self.spec)?)
    }

    /// The state document read as `T`.
    pub fn state_as<T: DeserializeOwned>(&self) -> Result<T, StateError> {
        Ok(T::deserialize(&self.state)?)
    }
}

/// A controller decision as recorded: what was decided, why, and the split around it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DecisionRow {
    /// When it was decided, in ms since the Unix epoch.
    pub at: u64,
    /// The decision's kind, such as `SetWeights` or `Rollback`.
    pub kind: String,
    /// Why, in full.
    pub reason: String,
    /// The decision in one line (empty for decisions recorded before summaries were).
    #[serde(default)]
    pub summary: String,
    /// The variants' weights before the decision.
    pub weights_before: Vec<u32>,
    /// The variants' weights the decision sets (equal to `weights_before` for a hold).
    pub weights_after: Vec<u32>,
    /// The observations it was made from.
    pub observations: serde_json::Value,
}

/// One change of an experiment's split.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SplitChange {
    /// When the decision that made it was taken, in ms since the Unix epoch.
    pub at: u64,
    /// The variants' weights from then on.
    pub weights: Vec<u32>,
    /// The decision's reason.
    pub reason: String,
}

impl Store {
    /// Opens the database at `path` with WAL, `synchronous=FULL`, foreign keys and a busy
    /// timeout, and brings its schema up to date.
    ///
    /// A missing file is created whole (mode 0600, schema included) under another name
    /// and then linked into place, so a file at `path` is never a half-made database. An
    /// existing file is checked before anything reads it: one cut short, overwritten, or
    /// whose write-ahead log is damaged is refused with [`StateError::Corrupt`], one that
    /// is not abgate's with [`StateError::Foreign`], and neither is written to.
    pub fn open(path: &Path) -> Result<Store, StateError> {
        if !file::exists(path)? {
            file::create_database(path, |conn| {
                schema::configure(conn)?;
                schema::migrate(conn)
            })?;
        }
        let mut conn = open_existing(path)?;
        schema::migrate(&mut conn)?;
        Ok(Store::wrap(conn))
    }

    /// Opens a fresh private in-memory database (for tests: nothing survives the `Store`).
    pub fn open_in_memory() -> Result<Store, StateError> {
        let mut conn = Connection::open_in_memory()?;
        schema::configure(&conn)?;
        schema::migrate(&mut conn)?;
        Ok(Store::wrap(conn))
    }

    fn wrap(conn: Connection) -> Store {
        Store {
            conn: Arc::new(Mutex::new(conn)),
            // Never a change count: the first checkpoint always runs, folding in whatever
            // log a crash left.
            checkpointed_at: Arc::new(AtomicU64::new(u64::MAX)),
        }
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        // Poisoning carries no information here: a panic while the lock was held dropped
        // any open `Transaction`, which rolls back, so the connection is as it was.
        self.conn.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Copies the write-ahead log into the main file and empties the log, if anything was
    /// written since the last time; returns whether the main file now holds every commit.
    ///
    /// TRUNCATE rather than PASSIVE: it waits (up to the busy timeout) for readers such as
    /// a running backup instead of skipping the frames they still see, and leaves a log of
    /// zero bytes, so that the main file alone is the whole state (a copy of it is a
    /// usable backup) and no stale log lies around to be replayed. `false` when a reader
    /// held it up past the busy timeout; the next call tries again.
    pub fn checkpoint(&self) -> Result<bool, StateError> {
        let conn = self.conn();
        let changes = conn.total_changes();
        if self.checkpointed_at.load(Ordering::Relaxed) == changes {
            return Ok(true);
        }
        let busy: i64 = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |row| row.get(0))?;
        if busy != 0 {
            return Ok(false);
        }
        self.checkpointed_at.store(changes, Ordering::Relaxed);
        Ok(true)
    }

    /// Creates the experiment `id`, or replaces its spec and state documents; returns its
    /// revision (1 when created). Replacing a deleted experiment brings it back, keeping
    /// its history, its sequence numbers and its `created_at`.
    pub fn put_experiment(
        &self,
        id: &str,
        spec: &serde_json::Value,
        state: &serde_json::Value,
        now_ms: u64,
    ) -> Result<u64, StateError> {
        let spec = serde_json::to_string(spec)?;
        let state = serde_json::to_string(state)?;
        let conn = self.conn();
        let revision = conn.query_row(
            "INSERT INTO experiments (id, spec, state, revision, created_at, updated_at)
             VALUES (?1, ?2, ?3, 1, ?4, ?4)
             ON CONFLICT (id) DO UPDATE SET
                 spec = excluded.spec,
                 state = excluded.state,
                 revision = experiments.revision + 1,
                 updated_at = excluded.updated_at,
                 deleted_at = NULL
             RETURNING revision",
            params![id, spec, state, now_ms],
            |row| row.get(0),
        )?;
        Ok(revision)
    }

    /// The experiment `id`, deleted or not; `None` if it was never put.
    pub fn experiment(&self, id: &str) -> Result<Option<StoredExperiment>, StateError> {
        let raw = self
            .conn()
            .query_row(
                &format!("{SELECT_EXPERIMENT} WHERE id = ?1"),
                [id],
                RawExperiment::from_row,
            )
            .optional()?;
        raw.map(RawExperiment::parse).transpose()
    }

    /// The experiments not deleted, oldest first.
    pub fn experiments(&self) -> Result<Vec<StoredExperiment>, StateError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!(
            "{SELECT_EXPERIMENT} WHERE deleted_at IS NULL ORDER BY created_at, id"
        ))?;
        let raws = stmt
            .query_map([], RawExperiment::from_row)?
            .collect::<Result<Vec<_>, _>>()?;
        raws.into_iter().map(RawExperiment::parse).collect()
    }

    /// Soft-deletes the experiment `id`: hidden from [`experiments`](Store::experiments),
    /// refused by [`record_decision`](Store::record_decision), its decisions, split
    /// history and analyses kept for reports. Returns whether it was live.
    pub fn delete_experiment(&self, id: &str, now_ms: u64) -> Result<bool, StateError> {
        let changed = self.conn().execute(
            "UPDATE experiments
             SET deleted_at = ?2, updated_at = ?2, revision = revision + 1
             WHERE id = ?1 AND deleted_at IS NULL",
            params![id, now_ms],
        )?;
        Ok(changed > 0)
    }

    /// Records `decision` and the state it leads to in one transaction: the decision (not
    /// yet applied), a split-history row if it changes the weights, and `new_state` with
    /// the experiment's revision bumped. Refused with [`StateError::Conflict`], writing
    /// nothing, unless the experiment is still at `expected_revision`; with
    /// [`StateError::NotFound`] if it does not exist or was deleted. Returns the
    /// decision's sequence number (1, 2, 3... per experiment); the new revision is
    /// `expected_revision + 1`.
    pub fn record_decision(
        &self,
        id: &str,
        expected_revision: u64,
        decision: &DecisionRow,
        new_state: &serde_json::Value,
    ) -> Result<u64, StateError> {
        let weights_before = serde_json::to_string(&decision.weights_before)?;
        let weights_after = serde_json::to_string(&decision.weights_after)?;
        let observations = serde_json::to_string(&decision.observations)?;
        let new_state = serde_json::to_string(new_state)?;

        let mut conn = self.conn();
        // IMMEDIATE takes the write lock before the revision is read, so no other
        // connection (another process on the file) can commit between check and write.
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let found: Option<u64> = tx
            .query_row(
                "SELECT revision FROM experiments WHERE id = ?1 AND deleted_at IS NULL",
                [id],
                |row| row.get(0),
            )
            .optional()?;
        let found = found.ok_or_else(|| experiment_not_found(id))?;
        if found != expected_revision {
            return Err(StateError::Conflict {
                id: id.to_owned(),
                expected: expected_revision,
                found,
            });
        }
        let revision = found + 1;
        let seq: u64 = tx.query_row(
            "SELECT COALESCE(MAX(seq), 0) + 1 FROM decisions WHERE experiment_id = ?1",
            [id],
            |row| row.get(0),
        )?;
        tx.execute(
            "INSERT INTO decisions (experiment_id, seq, revision, at, kind, reason, summary,
                                    weights_before, weights_after, observations, applied)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, 0)",
            params![
                id,
                seq,
                revision,
                decision.at,
                decision.kind,
                decision.reason,
                decision.summary,
                weights_before,
                weights_after,
                observations,
            ],
        )?;
        if decision.weights_after != decision.weights_before {
            tx.execute(
                "INSERT INTO split_history (experiment_id, seq, at, weights, reason)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![id, seq, decision.at, weights_after, decision.reason],
            )?;
        }
        tx.execute(
            "UPDATE experiments SET state = ?2, revision = ?3, updated_at = ?4 WHERE id = ?1",
            params![id, new_state, revision, decision.at],
        )?;
        tx.commit()?;
        Ok(seq)
    }

    /// Marks decision `seq` of experiment `id` applied, once the route table carrying it
    /// has been swapped in. Marking it again is harmless.
    pub fn mark_applied(&self, id: &str, seq: u64) -> Result<(), StateError> {
        let changed = self.conn().execute(
            "UPDATE decisions SET applied = 1 WHERE experiment_id = ?1 AND seq = ?2",
            params![id, seq],
        )?;
        if changed == 0 {
            return Err(StateError::NotFound(format!(
                "decision {seq} of experiment {id:?}"
            )));
        }
        Ok(())
    }

    /// The decisions of live experiments recorded but not marked applied, as
    /// `(experiment id, decision, seq)`, by experiment then seq. After a crash between
    /// recording and applying, the controller applies them again on startup. A deleted
    /// experiment's pending decisions are left out: deleting it superseded them.
    pub fn unapplied(&self) -> Result<Vec<(String, DecisionRow, u64)>, StateError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!(
            "{SELECT_DECISION}
             JOIN experiments e ON e.id = d.experiment_id
             WHERE d.applied = 0 AND e.deleted_at IS NULL
             ORDER BY d.experiment_id, d.seq"
        ))?;
        let raws = stmt
            .query_map([], RawDecision::from_row)?
            .collect::<Result<Vec<_>, _>>()?;
        raws.into_iter()
            .map(|raw| {
                let (id, seq) = (raw.experiment_id.clone(), raw.seq);
                Ok((id, raw.parse()?, seq))
            })
            .collect()
    }

    /// Every decision of experiment `id` (deleted or not) as `(seq, decision, applied)`,
    /// in order. Empty for an unknown id.
    pub fn decisions(&self, id: &str) -> Result<Vec<(u64, DecisionRow, bool)>, StateError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!(
            "{SELECT_DECISION} WHERE d.experiment_id = ?1 ORDER BY d.seq"
        ))?;
        let raws = stmt
            .query_map([id], RawDecision::from_row)?
            .collect::<Result<Vec<_>, _>>()?;
        raws.into_iter()
            .map(|raw| {
                let (seq, applied) = (raw.seq, raw.applied);
                Ok((seq, raw.parse()?, applied))
            })
            .collect()
    }

    /// The changes of experiment `id`'s split, in order. Empty for an unknown id.
    pub fn split_history(&self, id: &str) -> Result<Vec<SplitChange>, StateError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT at, weights, reason FROM split_history
             WHERE experiment_id = ?1 ORDER BY seq",
        )?;
        let raws = stmt
            .query_map([id], |row| {
                Ok((
                    row.get::<_, u64>(0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, String>(2)?,
                ))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        raws.into_iter()
            .map(|(at, weights, reason)| {
                Ok(SplitChange {
                    at,
                    weights: serde_json::from_str(&weights)?,
                    reason,
                })
            })
            .collect()
    }

    /// Records a periodic analysis of live experiment `id` (observations and verdict)
    /// that led to no decision, for reports.
    pub fn record_analysis(
        &self,
        id: &str,
        at: u64,
        analysis: &serde_json::Value,
    ) -> Result<(), StateError> {
        let analysis = serde_json::to_string(analysis)?;
        // One statement, so the liveness check and the insert are atomic.
        let inserted = self.conn().execute(
            "INSERT INTO analyses (experiment_id, at, analysis)
             SELECT id, ?2, ?3 FROM experiments WHERE id = ?1 AND deleted_at IS NULL",
            params![id, at, analysis],
        )?;
        if inserted == 0 {
            return Err(experiment_not_found(id));
        }
        Ok(())
    }

    /// The analyses of experiment `id` (deleted or not) as `(at, analysis)`, by time then
    /// insertion. Empty for an unknown id.
    pub fn analyses(&self, id: &str) -> Result<Vec<(u64, serde_json::Value)>, StateError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT at, analysis FROM analyses WHERE experiment_id = ?1 ORDER BY at, id",
        )?;
        let raws = stmt
            .query_map([id], |row| {
                Ok((row.get::<_, u64>(0)?, row.get::<_, String>(1)?))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        raws.into_iter()
            .map(|(at, analysis)| Ok((at, serde_json::from_str(&analysis)?)))
            .collect()
    }

    /// Records a feedback score in [0, 1] for `variant` of live experiment `id`.
    pub fn record_feedback(
        &self,
        id: &str,
        at: u64,
        variant: &str,
        score: f64,
        request_id: Option<&str>,
    ) -> Result<(), StateError> {
        if !(0.0..=1.0).contains(&score) {
            return Err(StateError::Invalid(format!(
                "a feedback score is between 0 and 1, got {score}"
            )));
        }
        let inserted = self.conn().execute(
            "INSERT INTO feedback (experiment_id, at, variant, score, request_id)
             SELECT id, ?2, ?3, ?4, ?5 FROM experiments WHERE id = ?1 AND deleted_at IS NULL",
            params![id, at, variant, score, request_id],
        )?;
        if inserted == 0 {
            return Err(experiment_not_found(id));
        }
        Ok(())
    }

    /// The feedback of experiment `id` posted in `[from, to)`, per variant: `(variant,
    /// count, Σscore, Σscore²)`, by variant name.
    pub fn feedback_totals(
        &self,
        id: &str,
        from: u64,
        to: u64,
    ) -> Result<Vec<(String, u64, f64, f64)>, StateError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT variant, COUNT(*), TOTAL(score), TOTAL(score * score) FROM feedback
             WHERE experiment_id = ?1 AND at >= ?2 AND at < ?3
             GROUP BY variant ORDER BY variant",
        )?;
        let rows = stmt
            .query_map(params![id, from, to], |row| {
                Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }
}

/// Opens an existing state file after checking it, configured, not yet migrated.
pub(crate) fn open_existing(path: &Path) -> Result<Connection, StateError> {
    integrity::preflight(path)?;
    let damage = |e| integrity::sqlite_damage(path, e);
    let companions = file::Companions::before_opening(path);
    // No CREATE: the file was there a moment ago; if it went, say so rather than make it.
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(damage)?;
    let checked = (|| {
        // Until the checks pass, closing must not fold the log into the main file (SQLite
        // does when the last connection closes): a refused file is left as it was found.
        conn.set_db_config(DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, true)?;
        // Checked before configuring: setting WAL mode would write to a foreign file.
        conn.busy_timeout(schema::BUSY_TIMEOUT)?;
        integrity::verify(&conn, path)
    })();
    if let Err(e) = checked {
        drop(conn);
        companions.remove_those_opening_made();
        return Err(e);
    }
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, false)?;
    schema::configure(&conn).map_err(damage)?;
    Ok(conn)
}

fn experiment_not_found(id: &str) -> StateError {
    StateError::NotFound(format!("experiment {id:?}"))
}

const SELECT_EXPERIMENT: &str = "SELECT id, spec, state, revision, created_at, updated_at,
                                        deleted_at IS NOT NULL
                                 FROM experiments";

/// An experiments row before its JSON is parsed: rusqlite's row closures can only fail
/// with rusqlite errors, so parsing happens after.
struct RawExperiment {
    id: String,
    spec: String,
    state: String,
    revision: u64,
    created_at: u64,
    updated_at: u64,
    deleted: bool,
}

impl RawExperiment {
    fn from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<RawExperiment> {
        Ok(RawExperiment {
            id: row.get(0)?,
            spec: row.get(1)?,
            state: row.get(2)?,
            revision: row.get(3)?,
            created_at: row.get(4)?,
            updated_at: row.get(5)?,
            deleted: row.get(6)?,
        })
    }

    fn parse(self) -> Result<StoredExperiment, StateError> {
        Ok(StoredExperiment {
            id: self.id,
            spec: serde_json::from_str(&self.spec)?,
            state: serde_json::from_str(&self.state)?,
            revision: self.revision,
            created_at: self.created_at,
            updated_at: self.updated_at,
            deleted: self.deleted,
        })
    }
}

const SELECT_DECISION: &str = "SELECT d.experiment_id, d.seq, d.at, d.kind, d.reason,
                                      d.weights_before, d.weights_after, d.observations,
                                      d.applied, d.summary
                               FROM decisions d";

/// A decisions row before its JSON is parsed.
struct RawDecision {
    experiment_id: String,
    seq: u64,
    at: u64,
    kind: String,
    reason: String,
    weights_before: String,
    weights_after: String,
    observations: String,
    applied: bool,
    summary: String,
}

impl RawDecision {
    fn from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<RawDecision> {
        Ok(RawDecision {
            experiment_id: row.get(0)?,
            seq: row.get(1)?,
            at: row.get(2)?,
            kind: row.get(3)?,
            reason: row.get(4)?,
            weights_before: row.get(5)?,
            weights_after: row.get(6)?,
            observations: row.get(7)?,
            applied: row.get(8)?,
            summary: row.get(9)?,
        })
    }

    fn parse(self) -> Result<DecisionRow, StateError> {
        Ok(DecisionRow {
            at: self.at,
            kind: self.kind,
            reason: self.reason,
            summary: self.summary,
            weights_before: serde_json::from_str(&self.weights_before)?,
            weights_after: serde_json::from_str(&self.weights_after)?,
            observations: serde_json::from_str(&self.observations)?,
        })
    }
}
