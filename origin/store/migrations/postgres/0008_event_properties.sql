-- Issue 28: metric events carry `properties` and exposures the context `attributes` they
-- were evaluated with (compact JSON objects, NULL when there are none), and a metric may
-- count only the events whose properties match its `filter` (JSON, NULL for every event).
ALTER TABLE events ADD COLUMN properties TEXT;
ALTER TABLE metrics ADD COLUMN filter TEXT;
