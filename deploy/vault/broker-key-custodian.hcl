# hubspot-token-broker: key custodian policy, for the last step of a Transit key rotation
# only: `broker keys rewrap --retire`, which raises min_decryption_version once no stored
# ciphertext is older (the CLI checks that coverage first). Give it to a different person or
# job than the day-to-day operators, and only for the time of the retirement.
#
# Raising min_decryption_version too early makes every older ciphertext undecryptable, and
# `exportable` / `allow_plaintext_backup` can never be switched off again: so this is the one
# parameter it may set on the key's configuration (every other one is refused by Vault).
path "transit/keys/hubspot-tokens/config" {
  capabilities = ["update"]
  allowed_parameters = {
    "min_decryption_version" = []
  }
  denied_parameters = {
    "exportable"             = []
    "allow_plaintext_backup" = []
    "deletion_allowed"       = []
    "min_encryption_version" = []
    "auto_rotate_period"     = []
  }
}

# `broker keys rewrap --retire` rewraps what is left first, and reads the key's versions.
path "transit/keys/hubspot-tokens" {
  capabilities = ["read"]
}
path "transit/rewrap/hubspot-tokens" {
  capabilities = ["update"]
}
