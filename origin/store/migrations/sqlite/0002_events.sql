-- Event ingestion and the metric pipeline.

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

-- How far each consumer has read the log.
CREATE TABLE pipeline_cursors (
    name          TEXT PRIMARY KEY,
    position      INTEGER NOT NULL,
    updated_at_ms INTEGER NOT NULL
);

-- The per-unit and rollup tables are WITHOUT ROWID: their composite primary key is the only
-- B-tree, which halves the work of the pipeline's upserts.

-- Per-unit tables are keyed by unit first, as the pipeline reads them; reading one
-- experiment's units (rollup rebuilds, interaction analysis) scans, which is rare and cheaper
-- than maintaining a second index on every upsert.

-- A unit's first exposure to an experiment. Units seen in two variants are flagged and
-- left out of the analysis (but counted).
CREATE TABLE exposures (
    unit_key          TEXT NOT NULL,
    experiment_id     TEXT NOT NULL,
    variant           TEXT NOT NULL,
    first_exposure_ms INTEGER NOT NULL,
    multiple          INTEGER NOT NULL,
    PRIMARY KEY (unit_key, experiment_id)
) WITHOUT ROWID;

-- A unit's totals per experiment and event type: after its first exposure (the metric) and
-- before it (the CUPED covariate).
CREATE TABLE unit_metrics (
    unit_key      TEXT NOT NULL,
    experiment_id TEXT NOT NULL,
    event_type    TEXT NOT NULL,
    post_sum      REAL NOT NULL,
    post_count    INTEGER NOT NULL,
    pre_sum       REAL NOT NULL,
    pre_count     INTEGER NOT NULL,
    PRIMARY KEY (unit_key, experiment_id, event_type)
) WITHOUT ROWID;

-- Exposed units per experiment, variant and day (days since the epoch, UTC).
CREATE TABLE exposure_rollups (
    experiment_id TEXT NOT NULL,
    variant       TEXT NOT NULL,
    day           INTEGER NOT NULL,
    units         INTEGER NOT NULL,
    multiple      INTEGER NOT NULL,
    PRIMARY KEY (experiment_id, variant, day)
) WITHOUT ROWID;

-- Sufficient statistics per experiment, variant, metric and day, over units: x is the
-- unit's metric value (numerator for ratios), y the ratio denominator, c the pre-exposure
-- covariate. Results need only these sums.
CREATE TABLE metric_rollups (
    experiment_id TEXT NOT NULL,
    variant       TEXT NOT NULL,
    metric        TEXT NOT NULL,
    day           INTEGER NOT NULL,
    sum_x         REAL NOT NULL,
    sum_x2        REAL NOT NULL,
    sum_y         REAL NOT NULL,
    sum_y2        REAL NOT NULL,
    sum_xy        REAL NOT NULL,
    sum_c         REAL NOT NULL,
    sum_c2        REAL NOT NULL,
    sum_xc        REAL NOT NULL,
    PRIMARY KEY (experiment_id, variant, metric, day)
) WITHOUT ROWID;

-- The metric keys each experiment's metric rollups were built for; when an experiment's
-- metric list changes, its rollups are rebuilt from the per-unit totals.
CREATE TABLE rollup_plans (
    experiment_id TEXT PRIMARY KEY,
    metrics       TEXT NOT NULL
);

-- Events that failed processing, retried with backoff; after three failures they become
-- dead letters until an admin replays them.
CREATE TABLE pipeline_retries (
    seq             INTEGER PRIMARY KEY,
    attempts        INTEGER NOT NULL,
    last_error      TEXT NOT NULL,
    next_attempt_ms INTEGER NOT NULL
);

CREATE TABLE dead_letters (
    seq          INTEGER PRIMARY KEY,
    event_id     TEXT NOT NULL,
    error        TEXT NOT NULL,
    attempts     INTEGER NOT NULL,
    failed_at_ms INTEGER NOT NULL
);
