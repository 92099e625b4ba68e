-- The range of values a metric's events may carry (issue 26): one event of 1e200 would make
-- a sum of squares infinite and the metric's statistics, a guardrail's among them, void.
ALTER TABLE metrics ADD COLUMN value_min REAL;
ALTER TABLE metrics ADD COLUMN value_max REAL;
