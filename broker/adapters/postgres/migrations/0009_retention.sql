-- Retention (broker.core.retention): one replica at a time deletes expired rows in small
-- batches.
--
-- audit_events stays append-only for everyone else: the DELETE rule of 0001 now lets a
-- delete through only inside a transaction that has set broker.retention = 'on'
-- (set_config(..., true), i.e. SET LOCAL), which only the retention sweep does. Any other
-- DELETE still silently does nothing, and UPDATE is still refused as before.
CREATE OR REPLACE RULE audit_events_no_delete AS ON DELETE TO audit_events
    WHERE current_setting('broker.retention', true) IS DISTINCT FROM 'on'
    DO INSTEAD NOTHING;

-- The sweep finds expired rows by age (audit_events_at already exists).
CREATE INDEX events_at ON events (at);
CREATE INDEX token_journal_created ON token_journal (created_at);
