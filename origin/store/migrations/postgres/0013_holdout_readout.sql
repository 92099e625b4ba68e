-- Issue 28: a holdout is read out as a two-arm experiment (held against released units),
-- which needs the unit its experiments randomize by and the metrics it is compared on.
-- A holdout made before this migration compares the unit of the first experiment that
-- respects it, preferring experiments that are not archived (`user_id` if none does), on
-- no metrics until some are chosen.
ALTER TABLE holdouts ADD COLUMN unit TEXT NOT NULL DEFAULT 'user_id';
ALTER TABLE holdouts ADD COLUMN metrics TEXT NOT NULL DEFAULT '[]';
UPDATE holdouts SET unit = COALESCE(
    (SELECT e.unit FROM experiments e WHERE e.holdout_id = holdouts.id
     ORDER BY CASE WHEN e.status = 'archived' THEN 1 ELSE 0 END, e.created_at_ms, e.id
     LIMIT 1),
    'user_id');
