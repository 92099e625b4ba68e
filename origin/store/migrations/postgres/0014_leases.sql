-- Issue 30: roles that one process at a time holds, taken for a while and renewed. The
-- warehouse's ticks move stored rollups forward by differences; two processes ticking from
-- the same computation would count a difference twice.
CREATE TABLE leases (
    name          TEXT PRIMARY KEY,
    holder        TEXT NOT NULL,
    expires_at_ms BIGINT NOT NULL
);
