-- Proactive refresh schedule: when a portal's token should be refreshed ahead of expiry
-- (about 2/3 of its lifetime, jittered per write so thousands of portals do not align),
-- an app-level pause for misconfigured apps (their portals are never touched), and an
-- index for replicas polling which portals stopped serving (the invalidation fallback).

ALTER TABLE portals ADD COLUMN refresh_after timestamptz;
UPDATE portals SET refresh_after = access_expires_at - interval '10 minutes'
    WHERE access_expires_at IS NOT NULL;
CREATE INDEX portals_refresh_after ON portals (refresh_after)
    WHERE state IN ('active', 'refresh_failing');

ALTER TABLE token_journal ADD COLUMN refresh_after timestamptz;
ALTER TABLE apps ADD COLUMN paused_until timestamptz;
CREATE INDEX portals_updated ON portals (updated_at);
