-- Signing keys (broker.core.signing): the keys themselves are Transit keys that never leave
-- Vault; this table only records when an old version stops verifying. A row (purpose,
-- version, retires_at) is written by `broker keys rotate-signing`: the version kept
-- verifying until retires_at (the overlap), and is refused from then on. A version with no
-- row has not been rotated away and verifies.
CREATE TABLE signing_key_retirements (
    purpose     text        NOT NULL,
    version     integer     NOT NULL CHECK (version > 0),
    retires_at  timestamptz NOT NULL,
    retired_by  text        NOT NULL,
    PRIMARY KEY (purpose, version)
);

-- Install links (broker.core.install_links): one row per minted link, so links can be
-- listed and revoked. The link token itself is never stored (only its id, which it names).
CREATE TABLE install_links (
    id          text        PRIMARY KEY,
    app         text        NOT NULL,
    hub_id      bigint,
    return_to   text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    created_by  text        NOT NULL,
    expires_at  timestamptz NOT NULL,
    revoked_at  timestamptz,
    revoked_by  text
);
CREATE INDEX install_links_app ON install_links (app, created_at DESC);
