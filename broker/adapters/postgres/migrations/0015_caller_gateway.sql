-- The HubSpot gateway (/v1/portals/{hub_id}/hubspot/...): the HubSpot path prefixes a caller
-- may call through it (none until granted; '/' grants every path), and its weight in the
-- per-portal queue (turns per round between callers waiting for the portal's budget).
ALTER TABLE callers ADD COLUMN hubspot_paths text[] NOT NULL DEFAULT '{}';
ALTER TABLE callers ADD COLUMN gateway_weight smallint NOT NULL DEFAULT 1
    CHECK (gateway_weight BETWEEN 1 AND 100);
