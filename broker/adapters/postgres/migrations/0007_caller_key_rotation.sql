-- Broker-issued key rotation with an overlap window: the previous key keeps working until
-- previous_key_expires_at, so a service can roll out its new key without downtime.
ALTER TABLE callers ADD COLUMN previous_key_id text UNIQUE;
ALTER TABLE callers ADD COLUMN previous_key_hash text;
ALTER TABLE callers ADD COLUMN previous_key_expires_at timestamptz;
