-- Initial schema: apps, portals (grants), token_journal, callers, audit_events, events.
-- Tokens are stored only as Vault Transit ciphertext ("vault:vN:..."); client secrets are
-- not stored here at all (Vault KV v2).

CREATE TABLE apps (
    slug                        text PRIMARY KEY CHECK (slug ~ '^[a-z0-9][a-z0-9-]{0,62}$'),
    client_id                   text NOT NULL,
    redirect_uri                text NOT NULL,
    scopes                      text[] NOT NULL DEFAULT '{}',
    optional_scopes             text[] NOT NULL DEFAULT '{}',
    api_version                 text NOT NULL DEFAULT '2026-03'
                                CHECK (api_version IN ('2026-03', '2026-09', 'v3', 'v1')),
    allow_marketplace_installs  boolean NOT NULL DEFAULT false,
    user_level                  boolean NOT NULL DEFAULT false,
    misconfigured_at            timestamptz,
    created_at                  timestamptz NOT NULL DEFAULT clock_timestamp(),
    updated_at                  timestamptz NOT NULL DEFAULT clock_timestamp()
);

CREATE TABLE portals (
    id                 bigserial PRIMARY KEY,
    app                text NOT NULL REFERENCES apps (slug),
    hub_id             bigint NOT NULL CHECK (hub_id > 0),
    user_id            bigint,              -- user-level apps only; NULL otherwise
    hub_domain         text,
    installed_by       text,                -- the HubSpot user who consented (an email)
    scopes             text[] NOT NULL DEFAULT '{}',
    state              text NOT NULL DEFAULT 'active'
                       CHECK (state IN ('active', 'refresh_failing', 'needs_reauth',
                                        'quarantined', 'revoked')),
    refresh_ct         text CHECK (refresh_ct IS NULL OR refresh_ct LIKE 'vault:v%'),
    access_ct          text CHECK (access_ct IS NULL OR access_ct LIKE 'vault:v%'),
    access_expires_at  timestamptz,
    version            bigint NOT NULL DEFAULT 1,
    lease_owner        text,
    lease_epoch        bigint NOT NULL DEFAULT 0,
    lease_until        timestamptz,
    failure_count      integer NOT NULL DEFAULT 0,
    last_error         text,
    next_attempt_at    timestamptz,
    installed_at       timestamptz NOT NULL DEFAULT clock_timestamp(),
    updated_at         timestamptz NOT NULL DEFAULT clock_timestamp(),
    refreshed_at       timestamptz,
    revoked_at         timestamptz
);
-- One grant per (app, hub) and, for user-level apps, per user.
CREATE UNIQUE INDEX portals_identity ON portals (app, hub_id, COALESCE(user_id, 0));
CREATE INDEX portals_hub ON portals (hub_id);
-- The proactive refresher scans serving portals by expiry.
CREATE INDEX portals_due ON portals (access_expires_at)
    WHERE state IN ('active', 'refresh_failing');

-- Every token response, encrypted, written before the fenced commit: never lost.
CREATE TABLE token_journal (
    id                 bigserial PRIMARY KEY,
    portal_id          bigint NOT NULL REFERENCES portals (id) ON DELETE CASCADE,
    lease_epoch        bigint NOT NULL,
    lease_owner        text NOT NULL,
    base_version       bigint NOT NULL,     -- the portal version the refresh started from
    refresh_ct         text NOT NULL CHECK (refresh_ct LIKE 'vault:v%'),
    access_ct          text NOT NULL CHECK (access_ct LIKE 'vault:v%'),
    access_expires_at  timestamptz NOT NULL,
    applied_at         timestamptz,
    created_at         timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX token_journal_portal ON token_journal (portal_id, id DESC);

CREATE TABLE callers (
    id             bigserial PRIMARY KEY,
    name           text NOT NULL UNIQUE CHECK (name ~ '^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$'),
    key_id         text UNIQUE,
    key_hash       text,                   -- sha256 of the key's secret part, hex
    roles          text[] NOT NULL DEFAULT '{tokens:read}',
    apps           text[],                 -- NULL: every app
    hub_ids        bigint[],               -- NULL: every hub
    expires_at     timestamptz,
    disabled_at    timestamptz,
    last_used_at   timestamptz,
    created_at     timestamptz NOT NULL DEFAULT clock_timestamp()
);

-- Append-only. Never a token or secret: tokens appear as a short keyed fingerprint.
CREATE TABLE audit_events (
    id         bigserial PRIMARY KEY,
    at         timestamptz NOT NULL DEFAULT clock_timestamp(),
    actor      text NOT NULL,
    action     text NOT NULL,
    app        text,
    hub_id     bigint,
    user_id    bigint,
    detail     jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX audit_events_hub ON audit_events (hub_id, at);
CREATE INDEX audit_events_at ON audit_events (at);

CREATE RULE audit_events_no_update AS ON UPDATE TO audit_events DO INSTEAD NOTHING;
CREATE RULE audit_events_no_delete AS ON DELETE TO audit_events DO INSTEAD NOTHING;

-- Outbox of portal state changes for webhooks and subscribers.
CREATE TABLE events (
    id            bigserial PRIMARY KEY,
    at            timestamptz NOT NULL DEFAULT clock_timestamp(),
    type          text NOT NULL,
    app           text,
    hub_id        bigint,
    user_id       bigint,
    payload       jsonb NOT NULL DEFAULT '{}',
    delivered_at  timestamptz
);
CREATE INDEX events_undelivered ON events (id) WHERE delivered_at IS NULL;
