-- Migration 1: the initial schema.
--
-- Conventions: timestamps are INTEGER milliseconds since the Unix epoch (the controller's
-- clock, passed in, so tests control it); documents are JSON as TEXT, opaque to this
-- crate so that it does not depend on the experiment crate's types. Tables are STRICT so
-- that a value of the wrong type is refused instead of silently stored.

-- One row per experiment id, ever. Deleting is soft (`deleted_at`) so that reports can
-- still show a finished experiment's decisions and split history, and so that the
-- history rows below keep a parent for their foreign keys.
CREATE TABLE experiments (
    id         TEXT    NOT NULL PRIMARY KEY,
    spec       TEXT    NOT NULL,                       -- JSON: the Experiment as written
    state      TEXT    NOT NULL,                       -- JSON: where the controller is
    -- Optimistic concurrency: every write bumps it; a decision names the revision it was
    -- computed from and is refused if the row moved on meanwhile.
    revision   INTEGER NOT NULL CHECK (revision >= 1),
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    deleted_at INTEGER                                  -- NULL while live
) STRICT;

CREATE INDEX experiments_live_by_created ON experiments (created_at, id)
    WHERE deleted_at IS NULL;

-- Every decision, written in the same transaction as the state it leads to and BEFORE it
-- takes effect (write-ahead at the application level): after a crash the controller
-- finds the decisions it had not yet applied (`applied = 0`) and applies them again.
-- Applying is idempotent (it sets weights), so a decision is never lost; the revision
-- check makes sure none is recorded twice.
CREATE TABLE decisions (
    experiment_id  TEXT    NOT NULL REFERENCES experiments (id),
    -- 1, 2, 3... per experiment, contiguous: MAX(seq) + 1 inside the writing transaction.
    seq            INTEGER NOT NULL CHECK (seq >= 1),
    -- The experiment revision this decision produced; unique, so two decisions can never
    -- both claim the step from one revision.
    revision       INTEGER NOT NULL,
    at             INTEGER NOT NULL,
    kind           TEXT    NOT NULL,
    reason         TEXT    NOT NULL,
    weights_before TEXT    NOT NULL,                    -- JSON array of integers
    weights_after  TEXT    NOT NULL,                    -- JSON array of integers
    observations   TEXT    NOT NULL,                    -- JSON
    applied        INTEGER NOT NULL DEFAULT 0 CHECK (applied IN (0, 1)),
    PRIMARY KEY (experiment_id, seq),
    UNIQUE (experiment_id, revision)
) STRICT, WITHOUT ROWID;

-- Startup reads only the few unapplied decisions; a partial index keeps that cheap however
-- long the history grows.
CREATE INDEX decisions_unapplied ON decisions (experiment_id, seq) WHERE applied = 0;

-- One row per decision that changed the weights: the split an experiment had at any time.
CREATE TABLE split_history (
    experiment_id TEXT    NOT NULL,
    seq           INTEGER NOT NULL,                     -- the decision that changed it
    at            INTEGER NOT NULL,
    weights       TEXT    NOT NULL,                     -- JSON array of integers
    reason        TEXT    NOT NULL,
    PRIMARY KEY (experiment_id, seq),
    FOREIGN KEY (experiment_id, seq) REFERENCES decisions (experiment_id, seq)
) STRICT, WITHOUT ROWID;

-- Periodic analyses that led to no decision (observations and verdict), for reports.
CREATE TABLE analyses (
    id            INTEGER PRIMARY KEY,                  -- insertion order among equal `at`
    experiment_id TEXT    NOT NULL REFERENCES experiments (id),
    at            INTEGER NOT NULL,
    analysis      TEXT    NOT NULL                      -- JSON
) STRICT;

CREATE INDEX analyses_by_experiment ON analyses (experiment_id, at, id);
