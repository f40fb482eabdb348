-- A per-caller request rate (requests per second, per replica); NULL uses the broker's
-- default (BROKER_CALLER_RATE).
ALTER TABLE callers ADD COLUMN rate_limit real CHECK (rate_limit IS NULL OR rate_limit > 0);
