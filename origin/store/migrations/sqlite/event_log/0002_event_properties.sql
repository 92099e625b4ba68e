-- Issue 28: metric events' `properties` and exposures' context `attributes` (compact JSON
-- objects, NULL when there are none).
ALTER TABLE events ADD COLUMN properties TEXT;
