-- Issue 28: metric events carry `properties` and exposures the context `attributes` they
-- were evaluated with (compact JSON objects, NULL when there are none), and a metric may
-- count only the events whose properties match its `filter` (JSON, NULL for every event).
ALTER TABLE events ADD COLUMN properties TEXT;
ALTER TABLE metrics ADD COLUMN filter TEXT;
-- Exposures keep the attributes of the unit's first exposure, which drill-downs group by;
-- experiments declare the dimensions (attribute names) they may be broken down by.
ALTER TABLE exposures ADD COLUMN attributes TEXT;
ALTER TABLE experiments ADD COLUMN dimensions TEXT NOT NULL DEFAULT '[]';
-- The property names each event type's events have carried (kept by the sink that stores
-- the events), so that results can say when a filter tests a property no event has.
CREATE TABLE event_properties (
    event_type    TEXT NOT NULL,
    name          TEXT NOT NULL,
    first_seen_ms BIGINT NOT NULL,
    PRIMARY KEY (event_type, name)
);
