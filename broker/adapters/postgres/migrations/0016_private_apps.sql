-- Private apps (issue 16, part 3). An app of kind 'private' is a HubSpot private app: it
-- belongs to one account (private_hub_id) and has no client id, secret or redirect URI. Its
-- one portal row carries token_kind 'private_app': the access token is static (HubSpot never
-- expires it; an operator rotates it in HubSpot's UI) and lives in Vault KV v2 beside the
-- client secrets (<kv_prefix>/apps/<slug>/private-app/<hub_id>), never here. Such a row has
-- no ciphertext and no refresh schedule, so the proactive refresher never claims it.
ALTER TABLE apps ADD COLUMN kind text NOT NULL DEFAULT 'oauth'
    CHECK (kind IN ('oauth', 'private'));
ALTER TABLE apps ADD COLUMN private_hub_id bigint;
ALTER TABLE apps ADD CONSTRAINT apps_private_hub
    CHECK ((kind = 'private') = (private_hub_id IS NOT NULL AND private_hub_id > 0));

-- portals is large (millions of rows) and every ALTER here holds its ACCESS EXCLUSIVE lock:
-- a constant default adds the column without a rewrite, and every CHECK is NOT VALID, so
-- nothing scans the table under that lock (an inline CHECK would: 312 ms at 1.5 M rows).
-- Every existing row is an OAuth grant, so both checks hold; validating them is an online
-- step (SHARE UPDATE EXCLUSIVE: reads and writes go on) an operator may run at any time:
--   ALTER TABLE portals VALIDATE CONSTRAINT portals_token_kind;
--   ALTER TABLE portals VALIDATE CONSTRAINT portals_private_app_static;
-- New and updated rows are checked either way.
ALTER TABLE portals ADD COLUMN token_kind text NOT NULL DEFAULT 'oauth';
ALTER TABLE portals ADD CONSTRAINT portals_token_kind
    CHECK (token_kind IN ('oauth', 'private_app')) NOT VALID;
-- After a rotation: when HubSpot stops accepting the previous token (what the operator said
-- when rotating it there; NULL: not given). For operators; the broker serves the new one.
ALTER TABLE portals ADD COLUMN previous_expires_at timestamptz;
ALTER TABLE portals ADD CONSTRAINT portals_private_app_static
    CHECK (token_kind = 'oauth'
           OR (refresh_ct IS NULL AND access_ct IS NULL AND refresh_after IS NULL))
    NOT VALID;

-- A revoked private app's token still to be destroyed in Vault KV (Vault was down when the
-- portal was revoked): a pending_revocations row without a refresh token, retried by the
-- same background loop as HubSpot's revocations until Vault confirms. A small table.
ALTER TABLE pending_revocations ALTER COLUMN refresh_ct DROP NOT NULL;
