# hubspot-token-broker: runtime policy (every replica, `broker serve`).
#
# Written for the default settings: BROKER_VAULT_KV_MOUNT=secret,
# BROKER_VAULT_KV_PREFIX=hubspot-token-broker, BROKER_VAULT_TRANSIT_MOUNT=transit,
# BROKER_VAULT_TRANSIT_KEY=hubspot-tokens, BROKER_VAULT_SIGNING_KEY_PREFIX=hubspot-token-broker-.
# Change the paths below if you change those. KV v2 puts secret data under <mount>/data/<path>.

# HubSpot app client secrets, and private apps' tokens (apps/<slug>/private-app/<hub_id>):
# read only. They are written by `broker apps add` / `add-private`, which run under
# broker-admin.hcl (or the management API under broker-management.hcl).
path "secret/data/hubspot-token-broker/apps/*" {
  capabilities = ["read"]
}

# Revoking a private app's portal (`broker portals revoke`, the management API) destroys its
# token with every version: a replica may destroy those tokens, never write or read others.
path "secret/metadata/hubspot-token-broker/apps/+/private-app/*" {
  capabilities = ["delete"]
}

# Tokens at rest: encrypt and decrypt with the one Transit key, nothing else. No key reads,
# no rotation, no export: key management stays with operators.
path "transit/encrypt/hubspot-tokens" {
  capabilities = ["update"]
}
path "transit/decrypt/hubspot-tokens" {
  capabilities = ["update"]
}

# Signing keys (broker.core.signing), one Transit key per purpose: sign and verify through
# Vault, nothing else. The keys never leave Vault: no read of their material, no export, no
# backup, no configuration, no rotation (operators rotate, broker-admin.hcl).
path "transit/hmac/hubspot-token-broker-session" {
  capabilities = ["update"]
}
path "transit/verify/hubspot-token-broker-session" {
  capabilities = ["update"]
}
path "transit/hmac/hubspot-token-broker-install-link" {
  capabilities = ["update"]
}
path "transit/verify/hubspot-token-broker-install-link" {
  capabilities = ["update"]
}
path "transit/hmac/hubspot-token-broker-fingerprint" {
  capabilities = ["update"]
}

# Keep its own login alive (token, AppRole and Kubernetes auth all yield a renewable token).
path "auth/token/renew-self" {
  capabilities = ["update"]
}
path "auth/token/lookup-self" {
  capabilities = ["read"]
}
