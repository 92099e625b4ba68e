-- Configuration, snapshots, API keys, audit log and outbox.
-- Times are milliseconds since the Unix epoch; JSON documents are TEXT.
-- Only portable types are used so that one query layer serves SQLite and PostgreSQL.

CREATE TABLE layers (
    id            TEXT PRIMARY KEY,
    key           TEXT NOT NULL UNIQUE,
    name          TEXT NOT NULL,
    description   TEXT NOT NULL,
    unit          TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL,
    updated_at_ms INTEGER NOT NULL
);

CREATE TABLE holdouts (
    id            TEXT PRIMARY KEY,
    key           TEXT NOT NULL UNIQUE,
    name          TEXT NOT NULL,
    description   TEXT NOT NULL,
    percent_bp    INTEGER NOT NULL,
    created_at_ms INTEGER NOT NULL,
    updated_at_ms INTEGER NOT NULL
);

CREATE TABLE segments (
    id            TEXT PRIMARY KEY,
    key           TEXT NOT NULL UNIQUE,
    name          TEXT NOT NULL,
    description   TEXT NOT NULL,
    condition     TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL,
    updated_at_ms INTEGER NOT NULL
);

CREATE TABLE metrics (
    id                     TEXT PRIMARY KEY,
    key                    TEXT NOT NULL UNIQUE,
    name                   TEXT NOT NULL,
    description            TEXT NOT NULL,
    kind                   TEXT NOT NULL,
    event_type             TEXT NOT NULL,
    denominator_event_type TEXT,
    direction              TEXT NOT NULL,
    guardrail_threshold    REAL,
    created_at_ms          INTEGER NOT NULL,
    updated_at_ms          INTEGER NOT NULL
);

CREATE TABLE experiments (
    id                  TEXT PRIMARY KEY,
    key                 TEXT NOT NULL UNIQUE,
    name                TEXT NOT NULL,
    hypothesis          TEXT NOT NULL,
    description         TEXT NOT NULL,
    owner               TEXT NOT NULL,
    status              TEXT NOT NULL,
    unit                TEXT NOT NULL,
    layer_id            TEXT REFERENCES layers(id),
    traffic_bp          INTEGER NOT NULL,
    targeting           TEXT,
    holdout_id          TEXT REFERENCES holdouts(id),
    forced              TEXT NOT NULL,
    primary_metric      TEXT NOT NULL,
    secondary_metrics   TEXT NOT NULL,
    guardrail_metrics   TEXT NOT NULL,
    switchback_period_s INTEGER,
    analysis            TEXT NOT NULL,
    shipped_variant     TEXT,
    status_reason       TEXT,
    version             INTEGER NOT NULL,
    created_at_ms       INTEGER NOT NULL,
    updated_at_ms       INTEGER NOT NULL,
    started_at_ms       INTEGER,
    ended_at_ms         INTEGER
);
CREATE INDEX experiments_by_status ON experiments (status, created_at_ms, id);
CREATE INDEX experiments_by_layer ON experiments (layer_id);

CREATE TABLE experiment_variants (
    experiment_id TEXT NOT NULL REFERENCES experiments(id) ON DELETE CASCADE,
    position      INTEGER NOT NULL,
    name          TEXT NOT NULL,
    weight_bp     INTEGER NOT NULL,
    config        TEXT NOT NULL,
    PRIMARY KEY (experiment_id, position)
);

-- Slot ranges [start_bp, end_bp) an experiment owns in its layer while running or paused.
CREATE TABLE layer_allocations (
    layer_id      TEXT NOT NULL REFERENCES layers(id),
    experiment_id TEXT NOT NULL REFERENCES experiments(id) ON DELETE CASCADE,
    start_bp      INTEGER NOT NULL,
    end_bp        INTEGER NOT NULL,
    PRIMARY KEY (layer_id, start_bp)
);
CREATE INDEX layer_allocations_by_experiment ON layer_allocations (experiment_id);

CREATE TABLE flags (
    id            TEXT PRIMARY KEY,
    key           TEXT NOT NULL UNIQUE,
    description   TEXT NOT NULL,
    enabled       INTEGER NOT NULL,
    unit          TEXT NOT NULL,
    off_value     TEXT NOT NULL,
    default_value TEXT NOT NULL,
    rules         TEXT NOT NULL,
    version       INTEGER NOT NULL,
    created_at_ms INTEGER NOT NULL,
    updated_at_ms INTEGER NOT NULL
);

CREATE TABLE api_keys (
    id            TEXT PRIMARY KEY,
    name          TEXT NOT NULL,
    role          TEXT NOT NULL,
    key_hash      TEXT NOT NULL UNIQUE,
    prefix        TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL,
    revoked_at_ms INTEGER
);

CREATE TABLE snapshots (
    version         INTEGER PRIMARY KEY,
    published_at_ms INTEGER NOT NULL,
    etag            TEXT NOT NULL,
    bytes           BLOB NOT NULL
);

CREATE TABLE audit_log (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    at_ms       INTEGER NOT NULL,
    actor       TEXT NOT NULL,
    action      TEXT NOT NULL,
    entity_type TEXT NOT NULL,
    entity_id   TEXT NOT NULL,
    details     TEXT NOT NULL
);
CREATE INDEX audit_log_by_entity ON audit_log (entity_type, entity_id, id);

-- Side effects (webhooks) to run after the change that caused them has committed.
CREATE TABLE outbox (
    id                 INTEGER PRIMARY KEY AUTOINCREMENT,
    created_at_ms      INTEGER NOT NULL,
    topic              TEXT NOT NULL,
    payload            TEXT NOT NULL,
    attempts           INTEGER NOT NULL,
    next_attempt_at_ms INTEGER NOT NULL,
    delivered_at_ms    INTEGER,
    last_error         TEXT
);
CREATE INDEX outbox_pending ON outbox (delivered_at_ms, next_attempt_at_ms);

CREATE TABLE idempotency_keys (
    api_key_id    TEXT NOT NULL,
    key           TEXT NOT NULL,
    request_hash  TEXT NOT NULL,
    status        INTEGER NOT NULL,
    response      TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL,
    PRIMARY KEY (api_key_id, key)
);
