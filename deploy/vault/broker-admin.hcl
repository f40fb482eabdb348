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
