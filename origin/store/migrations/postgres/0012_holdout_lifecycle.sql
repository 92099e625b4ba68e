-- Issue 28: a holdout's life is explicit. It holds units out from its start (its creation)
-- until an admin ends it; an ended holdout never holds anyone again. Holdouts created before
-- this migration have been holding units out since their creation.
ALTER TABLE holdouts ADD COLUMN status TEXT NOT NULL DEFAULT 'running'
    CHECK (status IN ('running', 'ended'));
ALTER TABLE holdouts ADD COLUMN started_at_ms BIGINT NOT NULL DEFAULT 0;
ALTER TABLE holdouts ADD COLUMN ended_at_ms BIGINT;
UPDATE holdouts SET started_at_ms = created_at_ms;
