-- Migration 3: a one-line summary beside each decision's full reason, for lists, logs
-- and live views. Decisions recorded before it have none: they keep an empty summary,
-- and readers fall back on the reason.
ALTER TABLE decisions ADD COLUMN summary TEXT NOT NULL DEFAULT '';
