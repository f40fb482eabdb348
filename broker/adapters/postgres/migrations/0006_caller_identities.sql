-- Workload identity: a caller may authenticate with a JWT from a configured issuer
-- (Kubernetes service-account tokens, any OIDC issuer); (issuer, subject) names the caller.
ALTER TABLE callers ADD COLUMN jwt_issuer text;
ALTER TABLE callers ADD COLUMN jwt_subject text;
ALTER TABLE callers ADD CONSTRAINT callers_identity_pair
    CHECK ((jwt_issuer IS NULL) = (jwt_subject IS NULL));
CREATE UNIQUE INDEX callers_identity ON callers (jwt_issuer, jwt_subject)
    WHERE jwt_issuer IS NOT NULL;
