-- Migration 2: feedback scores, the reward of a bandit experiment with `reward: feedback`.
--
-- One row per score posted to the admin API, kept like the decisions: never updated,
-- so a report or a restarted controller reads the same sums.
CREATE TABLE feedback (
    id            INTEGER NOT NULL PRIMARY KEY,
    experiment_id TEXT    NOT NULL REFERENCES experiments (id),
    at            INTEGER NOT NULL,
    variant       TEXT    NOT NULL,
    score         REAL    NOT NULL CHECK (score >= 0.0 AND score <= 1.0),
    request_id    TEXT
) STRICT;

CREATE INDEX feedback_by_experiment ON feedback (experiment_id, at);
