# hubspot-token-broker: operator policy for the CLI (`broker apps add`, `broker apps
# install-link`, `broker keys rewrap`, `broker keys rotate-signing`). Give it to the people or
# the job that run the CLI, never to the replicas.
#
# Written for the default BROKER_VAULT_KV_MOUNT=secret, BROKER_VAULT_KV_PREFIX=
# hubspot-token-broker, BROKER_VAULT_TRANSIT_MOUNT=transit, BROKER_VAULT_TRANSIT_KEY=
# hubspot-tokens and BROKER_VAULT_SIGNING_KEY_PREFIX=hubspot-token-broker-; change the paths
# if you change those.
#
# What it can never do: read any key (Transit keys are not exportable and nothing here may
# make one so: no `transit/keys/*/config`, no `transit/export`, no `transit/backup`), decrypt
# a token, sign a session or a fingerprint, or raise a key's min_decryption_version
# (broker-key-custodian.hcl, after `broker keys rewrap` covered every row).

# `broker apps add` reads the current list of client secrets, puts the new one first and
# writes the list back with check-and-set on the version it read (cas=0 for a new app):
# create for a new app, update for an existing one. No delete, no destroy, no metadata
# writes: old secret versions stay recoverable by a Vault administrator.
path "secret/data/hubspot-token-broker/apps/*" {
  capabilities = ["create", "read", "update"]
}

# `broker apps remove-private` / `broker portals revoke` of a private app's portal destroy
# the token with every version (nothing left to undelete); only those paths.
path "secret/metadata/hubspot-token-broker/apps/+/private-app/*" {
  capabilities = ["delete"]
}

# `broker keys status` / `broker keys rewrap`: read the key's versions (never its material:
# it is not exportable) and rewrap ciphertexts (Vault decrypts and re-encrypts inside; the
# caller never sees a plaintext).
path "transit/keys/hubspot-tokens" {
  capabilities = ["read"]
}
path "transit/rewrap/hubspot-tokens" {
  capabilities = ["update"]
}

# Install links: minting one is signing it with the install-link key, inside Vault. The
# broker only honours links it has a stored row for (`broker install-links`), so a MAC
# obtained here without the CLI installs nothing.
path "transit/hmac/hubspot-token-broker-install-link" {
  capabilities = ["update"]
}

# `broker keys rotate-signing` / `signing-status`: a new version of a signing key, and the
# versions (metadata only). Rotation changes nothing but the versions.
path "transit/keys/hubspot-token-broker-session" {
  capabilities = ["read"]
}
path "transit/keys/hubspot-token-broker-session/rotate" {
  capabilities = ["update"]
}
path "transit/keys/hubspot-token-broker-install-link" {
  capabilities = ["read"]
}
path "transit/keys/hubspot-token-broker-install-link/rotate" {
  capabilities = ["update"]
}
path "transit/keys/hubspot-token-broker-fingerprint" {
  capabilities = ["read"]
}
path "transit/keys/hubspot-token-broker-fingerprint/rotate" {
  capabilities = ["update"]
}
