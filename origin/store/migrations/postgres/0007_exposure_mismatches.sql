-- Exposures whose variant is not what the snapshot assigns their unit (forged or broken
-- clients): refused at ingestion, never in the results, and counted here, per experiment
-- and claimed variant, so that the results can show them (issue 26).
CREATE TABLE exposure_mismatches (
    experiment_id TEXT NOT NULL,
    variant       TEXT NOT NULL,
    count         BIGINT NOT NULL,
    last_at_ms    BIGINT NOT NULL,
    PRIMARY KEY (experiment_id, variant)
);
