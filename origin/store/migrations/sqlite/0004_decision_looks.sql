-- The looks results decide on, recorded the first time they are computed (origin/domain
-- results.rs, DecisionLook): late events may still revise a look's day in the rollups, and
-- a decision already shown must not move with them.
CREATE TABLE decision_looks (
    experiment_id  TEXT NOT NULL,
    look           INTEGER NOT NULL,
    record         TEXT NOT NULL,
    recorded_at_ms INTEGER NOT NULL,
    PRIMARY KEY (experiment_id, look)
);
