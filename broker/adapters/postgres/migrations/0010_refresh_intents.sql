-- Outcome-unknown record (DESIGN.md, "Refreshing"): before calling HubSpot, the holder writes
-- a journal row without tokens (the intent: portal, epoch, owner, base version, sent_at);
-- HubSpot's answer completes that row. A row still without tokens is a call whose outcome
-- is unknown (its holder crashed, stalled, or the call timed out): while it may still be
-- completed, an invalid_grant met by another holder means "wait", not needs_reauth.
ALTER TABLE token_journal
    ALTER COLUMN refresh_ct DROP NOT NULL,
    ALTER COLUMN access_ct DROP NOT NULL,
    ALTER COLUMN access_expires_at DROP NOT NULL,
    ADD COLUMN sent_at timestamptz,
    ADD CONSTRAINT token_journal_complete CHECK (
        (refresh_ct IS NULL) = (access_ct IS NULL)
        AND (refresh_ct IS NULL) = (access_expires_at IS NULL));
-- The healing sweep looks for answered, unapplied rows of needs_reauth portals.
CREATE INDEX portals_needs_reauth ON portals (id) WHERE state = 'needs_reauth';
