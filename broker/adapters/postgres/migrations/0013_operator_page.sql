-- The operator page's portal timeline (broker.adapters.postgres.portal_search): a portal's
-- audit events newest first, without the token.issued tallies, which outnumber every other
-- action by far on a busy portal (one per caller, token and flush window). Without this
-- index an old quarantine or install sits behind every issue since in audit_events_hub.
CREATE INDEX audit_events_portal_timeline ON audit_events (hub_id, at DESC, id DESC)
    WHERE action <> 'token.issued';

-- Its failure transitions (refresh_failing, flagged, recovered) are outbox events only: the
-- refresher does not audit them.
CREATE INDEX events_portal_failures ON events (hub_id, at DESC, id DESC)
    WHERE type IN ('portal.refresh_failing', 'portal.flagged', 'portal.recovered');
