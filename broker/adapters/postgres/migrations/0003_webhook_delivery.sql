-- Webhook delivery of the events outbox: one delivery row per (event, receiver endpoint).
--
-- The dispatcher first *fans out*: it takes events not fanned out yet (fanned_out_at IS
-- NULL, FOR UPDATE SKIP LOCKED, so commit order and id gaps cannot make it skip one), inserts
-- one delivery per configured endpoint, and stamps the event. Each delivery then has its own
-- attempts, schedule and error, so a dead receiver never holds back a healthy one.
-- events.delivered_at is set once every delivery of the event has been acknowledged.
--
-- A delivery is claimable when it is undelivered and next_attempt_at has passed (database
-- clock). Claiming increments attempts and pushes next_attempt_at out by the claim lease, so
-- a claim abandoned by a crashed replica becomes due again on its own; attempts is the
-- claim's fencing number (a late failure report of an older claim updates nothing).

ALTER TABLE events ADD COLUMN fanned_out_at timestamptz;
CREATE INDEX events_fan_out ON events (id) WHERE fanned_out_at IS NULL;

CREATE TABLE webhook_deliveries (
    id               bigserial PRIMARY KEY,
    event_id         bigint NOT NULL REFERENCES events (id) ON DELETE CASCADE,
    -- sha256 of the receiver URL, first 16 hex digits: receiver URLs may carry credentials
    -- (a token in the path or the query), so the URL itself is kept only in the settings.
    endpoint         text NOT NULL CHECK (endpoint ~ '^[0-9a-f]{16}$'),
    attempts         integer NOT NULL DEFAULT 0,   -- claims so far, delivered or not
    next_attempt_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    claimed_by       text,                         -- the replica that claimed it last
    last_attempt_at  timestamptz,
    last_error       text,                         -- an error code (http_503, timeout, ...)
    delivered_at     timestamptz,
    created_at       timestamptz NOT NULL DEFAULT clock_timestamp(),
    UNIQUE (event_id, endpoint)
);
-- The claim scans undelivered rows of one endpoint by due time.
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (endpoint, next_attempt_at)
    WHERE delivered_at IS NULL;
