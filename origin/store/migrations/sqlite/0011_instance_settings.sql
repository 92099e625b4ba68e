-- Issue 28: settings of the whole instance, a row each with a JSON value. `dimensions` lists
-- the attributes every experiment may be broken down by besides its own `dimensions`.
CREATE TABLE instance_settings (
    name          TEXT PRIMARY KEY,
    value         TEXT NOT NULL,
    version       BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL
);
