-- The management API (/v1/admin, issue 17).
--
-- Retired apps: an app with retired_at set installs nothing new (no install, no install
-- link, no marketplace callback), while the portals it already has keep being served and
-- refreshed until an operator revokes them. NULL: the app is in service.
ALTER TABLE apps ADD COLUMN retired_at timestamptz;
ALTER TABLE apps ADD COLUMN retired_by text;

-- The audit query pages newest first by the keyset (at, id): one index serves the order,
-- the cursor and the time filters, and the age-based retention deletes (so it replaces
-- audit_events_at). The app filter (and app-scoped callers) get their own.
-- Migrations run in one transaction, so these are not built CONCURRENTLY: on a large trail
-- the build holds audit writes back for its duration; replicas queue them in memory
-- (PostgresAudit, up to 100,000 events) and write them afterwards.
CREATE INDEX audit_events_at_id ON audit_events (at, id);
DROP INDEX audit_events_at;
CREATE INDEX audit_events_app_at_id ON audit_events (app, at, id);
