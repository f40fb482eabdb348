-- Outcome-unknown record (docs/refresh-protocol.md): before calling HubSpot, the holder
-- writes an intent (portal, epoch, owner, base version, sent_at); the answer deletes it in
-- the statement that journals the response, an answer without a token deletes it too. An
-- intent still here is a call whose outcome is unknown (its holder crashed, stalled, or the
-- call timed out): while it may still be answered, no second call goes out.
--
-- A table of its own, not rows of token_journal: replicas of the previous version, still
-- running during a rolling upgrade, read token_journal and never see an intent.
CREATE TABLE refresh_intents (
    id            bigserial PRIMARY KEY,
    portal_id     bigint NOT NULL REFERENCES portals (id) ON DELETE CASCADE,
    lease_epoch   bigint NOT NULL,
    lease_owner   text NOT NULL,
    base_version  bigint NOT NULL,
    sent_at       timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX refresh_intents_portal ON refresh_intents (portal_id, sent_at);
-- The healing sweep looks for answered, unapplied rows of needs_reauth portals.
CREATE INDEX portals_needs_reauth ON portals (id) WHERE state = 'needs_reauth';
