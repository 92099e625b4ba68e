-- Versions of layers, holdouts, segments and metrics, as experiments and flags have: a
-- change sent with If-Match is refused when another changed the object since (issue 26).
ALTER TABLE layers ADD COLUMN version BIGINT NOT NULL DEFAULT 1;
ALTER TABLE holdouts ADD COLUMN version BIGINT NOT NULL DEFAULT 1;
ALTER TABLE segments ADD COLUMN version BIGINT NOT NULL DEFAULT 1;
ALTER TABLE metrics ADD COLUMN version BIGINT NOT NULL DEFAULT 1;
