-- The event log in its own SQLite file (`abx-events.db` beside `abx.db`). Ingestion appends
-- here while the pipeline writes its tables in the main file: each file has its own write
-- lock, so the two writers no longer queue behind each other. The table and index are those
-- of the main file's migration 2, whose `events` table stays behind empty (see
-- `Db::move_events_to_log`). On PostgreSQL the log stays in the one database.

-- The append-only event log. `seq` orders the pipeline; `event_id` deduplicates retries for
-- as long as events are kept (events older than that are refused at ingestion).
CREATE TABLE events (
    seq            INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id       TEXT NOT NULL UNIQUE,
    received_at_ms INTEGER NOT NULL,
    ts_ms          INTEGER NOT NULL,
    kind           TEXT NOT NULL,
    unit_key       TEXT NOT NULL,
    experiment_id  TEXT,
    variant        TEXT,
    event_type     TEXT,
    value          REAL NOT NULL
);
-- Attribution looks up a unit's earlier metric events when its exposure arrives late. Only
-- metric events are indexed, so the lookup never visits the table and exposures cost one
-- index fewer at ingestion.
CREATE INDEX metric_events_by_unit ON events (unit_key, seq) WHERE kind = 'metric';
