-- Issue 27: CUPED for ratio metrics needs the ratio before exposure: each unit's pre-exposure
-- denominator d and its products with the other values (see `rollup::Sums`).
ALTER TABLE metric_rollups ADD COLUMN sum_d REAL NOT NULL DEFAULT 0;
ALTER TABLE metric_rollups ADD COLUMN sum_d2 REAL NOT NULL DEFAULT 0;
ALTER TABLE metric_rollups ADD COLUMN sum_cd REAL NOT NULL DEFAULT 0;
ALTER TABLE metric_rollups ADD COLUMN sum_xd REAL NOT NULL DEFAULT 0;
ALTER TABLE metric_rollups ADD COLUMN sum_yc REAL NOT NULL DEFAULT 0;
ALTER TABLE metric_rollups ADD COLUMN sum_yd REAL NOT NULL DEFAULT 0;
-- Ratio metrics' rollups were built without their covariate (c and d were 0): forgetting
-- their fingerprints makes the pipeline rebuild them from the per-unit totals once.
DELETE FROM rollup_plans WHERE metrics LIKE '%"kind":"ratio"%';
