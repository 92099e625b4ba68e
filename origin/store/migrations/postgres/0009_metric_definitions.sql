-- Issue 27: quantile metrics name their quantile, in (0, 1); mean, sum and ratio metrics may
-- cap each unit's value (JSON: {"value": 500} or {"percentile": 0.999}); any metric may count
-- only the events in a window after the exposure (JSON: {"delay_s": 0, "length_s": 259200}).
-- NULL where a metric has none.
ALTER TABLE metrics ADD COLUMN quantile DOUBLE PRECISION;
ALTER TABLE metrics ADD COLUMN cap TEXT;
ALTER TABLE metrics ADD COLUMN event_window TEXT;
