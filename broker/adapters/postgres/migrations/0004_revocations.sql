-- Upstream revocations still owed to HubSpot. A revoke takes effect locally at once (the
-- portal row is crypto-shredded); the refresh token's ciphertext waits here, bound to the
-- portal's Transit context, until HubSpot confirms the revoke, then the row is deleted.

CREATE TABLE pending_revocations (
    id               bigserial PRIMARY KEY,
    app              text NOT NULL REFERENCES apps (slug),
    hub_id           bigint NOT NULL,
    user_id          bigint,
    refresh_ct       text NOT NULL CHECK (refresh_ct LIKE 'vault:v%'),
    attempts         integer NOT NULL DEFAULT 0,
    last_error       text,
    next_attempt_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    created_at       timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX pending_revocations_due ON pending_revocations (next_attempt_at);
