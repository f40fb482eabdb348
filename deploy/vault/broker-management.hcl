# hubspot-token-broker: OPTIONAL policy for the replicas, beside broker.hcl, when operators
# manage the broker through its management API (`broker --url ...`, /v1/admin) instead of
# running the CLI with Vault credentials of their own. It grants the replicas what
# broker-admin.hcl grants an operator but minting install links (broker.hcl signs them):
#
#   PUT /v1/admin/apps/{app} with a client secret     write the app's client secrets
#   PUT / POST .../apps/{app}/private/{hub_id}         write a private app's token
#   /v1/admin/keys/transit (status, rewrap)           read the Transit key's versions, rewrap
#   /v1/admin/keys/signing (status, rotate)           read and rotate the signing keys
#
# Without it those requests answer 403 `vault_policy_denied` (and everything else works).
# The trade-off: a compromised replica could then overwrite client secrets and rotate keys
# (it still cannot read a key, export or back one up, or decrypt anything new); the callers
# allowed to ask are those with the apps:admin role. Never here: min_decryption_version
# (`broker keys rewrap --retire` stays a local step under broker-key-custodian.hcl).
#
# Written for the default BROKER_VAULT_KV_MOUNT=secret, BROKER_VAULT_KV_PREFIX=
# hubspot-token-broker, BROKER_VAULT_TRANSIT_MOUNT=transit, BROKER_VAULT_TRANSIT_KEY=
# hubspot-tokens and BROKER_VAULT_SIGNING_KEY_PREFIX=hubspot-token-broker-.

# Client secrets: read the list, put the new one first, write it back with check-and-set.
# Private apps' tokens (apps/<slug>/private-app/<hub_id>): written the same way.
path "secret/data/hubspot-token-broker/apps/*" {
  capabilities = ["create", "read", "update"]
}

# The Transit key's versions (never its material: it is not exportable), and rewrap.
path "transit/keys/hubspot-tokens" {
  capabilities = ["read"]
}
path "transit/rewrap/hubspot-tokens" {
  capabilities = ["update"]
}

# Signing keys: versions and rotation only.
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
