-- Issue 28: metric events' `properties` and exposures' context `attributes` (compact JSON
-- objects, NULL when there are none).
ALTER TABLE events ADD COLUMN properties TEXT;
-- The property names each event type's events have carried (kept by the sink that stores
-- the events), so that results can say when a filter tests a property no event has.
CREATE TABLE event_properties (
    event_type    TEXT NOT NULL,
    name          TEXT NOT NULL,
    first_seen_ms BIGINT NOT NULL,
    PRIMARY KEY (event_type, name)
);
