-- The audit trail's fingerprint of the stored access token (broker.core.signing: the
-- fingerprint key's keyed MAC, made in Vault when the token is obtained), so that a cache
-- fill needs no Transit hmac call. NULL on rows written before this column, or when Vault
-- could not make it then: a cache fill makes it instead.
ALTER TABLE portals ADD COLUMN access_fp text;

-- It always describes access_ct: a statement that changes the token without giving its
-- fingerprint (a grant adopted from the journal, a rewrap, any later code path) clears it.
CREATE FUNCTION portals_access_fp_follows_ct() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.access_fp IS NOT DISTINCT FROM OLD.access_fp THEN
        NEW.access_fp := NULL;
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER portals_access_fp_follows_ct
    BEFORE UPDATE OF access_ct ON portals
    FOR EACH ROW WHEN (NEW.access_ct IS DISTINCT FROM OLD.access_ct)
    EXECUTE FUNCTION portals_access_fp_follows_ct();
