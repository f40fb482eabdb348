# hubspot-token-broker: operator policy for `broker apps add` (register an app, rotate its
# client secret). Give it to the people or the job that run the CLI, never to the replicas.
#
# Written for the default BROKER_VAULT_KV_MOUNT=secret and
# BROKER_VAULT_KV_PREFIX=hubspot-token-broker; change the path if you change those.

# `broker apps add` reads the current list of client secrets, puts the new one first and
# writes the list back with check-and-set on the version it read (cas=0 for a new app):
# create for a new app, update for an existing one. No delete, no destroy, no metadata
# writes: old secret versions stay recoverable by a Vault administrator.
path "secret/data/hubspot-token-broker/apps/*" {
  capabilities = ["create", "read", "update"]
}

# The CLI builds the same use cases as a replica, which read the deployment key (token
# fingerprints in the audit trail); read only, like the runtime policy minus the create.
path "secret/data/hubspot-token-broker/broker/fingerprint" {
  capabilities = ["read"]
}

# `broker keys status` / `broker keys rewrap [--retire]`: read the key's versions, rewrap
# ciphertexts, and raise min_decryption_version once nothing old is left.
path "transit/keys/hubspot-tokens" {
  capabilities = ["read"]
}
path "transit/rewrap/hubspot-tokens" {
  capabilities = ["update"]
}
path "transit/keys/hubspot-tokens/config" {
  capabilities = ["update"]
}
