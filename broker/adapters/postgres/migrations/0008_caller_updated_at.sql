-- When a caller last changed in a way that matters for authentication or authorization (a
-- key, a rotation, roles, apps, hub_ids, expiry, disabling, ...): every replica polls it
-- (broker.core.invalidation) to drop cached callers when it missed the Redis message. A
-- trigger keeps it, so a change made by hand in SQL is seen too; `last_used_at` (written
-- every few seconds by each replica) does not count as a change.
ALTER TABLE callers ADD COLUMN updated_at timestamptz NOT NULL DEFAULT clock_timestamp();
CREATE INDEX callers_updated_at ON callers (updated_at);

CREATE FUNCTION callers_stamp_updated_at() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF to_jsonb(NEW) - 'last_used_at' - 'updated_at'
           IS DISTINCT FROM to_jsonb(OLD) - 'last_used_at' - 'updated_at' THEN
        NEW.updated_at := clock_timestamp();
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER callers_updated_at BEFORE UPDATE ON callers
    FOR EACH ROW EXECUTE FUNCTION callers_stamp_updated_at();
