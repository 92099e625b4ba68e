-- The deployment's snapshot signing keys. Every process of a deployment must sign with the
-- active key, or edges pinned to its public key would refuse the snapshots it publishes.
CREATE TABLE signing_keys (
    key_id        TEXT PRIMARY KEY,
    public_key    TEXT NOT NULL,
    active        INTEGER NOT NULL,
    created_at_ms BIGINT NOT NULL
);

-- At most one active key, whatever two first processes or an activation race to write.
CREATE UNIQUE INDEX signing_keys_one_active ON signing_keys (active) WHERE active = 1;
