#!/bin/sh
# Make an OpenBao (or Vault, with BAO=vault) server ready for hubspot-token-broker.
# Idempotent: run it again and it verifies instead of changing; it never "fixes" a mount or
# key of the wrong type, it stops with an error instead.
#
#   BAO_ADDR, BAO_TOKEN   where, and a token allowed to manage mounts, policies and auth
#                         (VAULT_ADDR, VAULT_TOKEN with BAO=vault)
#   KV_MOUNT              KV v2 mount for client secrets            (default: secret)
#   KV_CAS_REQUIRED       "true": require check-and-set on the whole KV mount (only for a
#                         mount dedicated to the broker, as in deploy/compose.yaml)
#   TRANSIT_MOUNT         Transit mount                              (default: transit)
#   TRANSIT_KEY           Transit key: aes256-gcm96, derived=true    (default: hubspot-tokens)
#   SIGNING_KEY_PREFIX    signing keys PREFIX{session,install-link,fingerprint}: aes256-gcm96,
#                         never exportable          (default: hubspot-token-broker-)
#   POLICY_DIR            where the policies (*.hcl) are             (default: beside this file)
#   BROKER_ROLE_ID, BROKER_SECRET_ID   when both are set, an AppRole "hubspot-token-broker"
#                         with the broker policy and exactly these credentials (dev only:
#                         in production let Vault generate the secret id, see README.md)
#   ADMIN_ROLE_ID, ADMIN_SECRET_ID     the same for "hubspot-token-broker-admin"
#   TOKEN_TTL             TTL of tokens issued to those roles        (default: 24h)
set -eu

BAO=${BAO:-bao}
KV_MOUNT=${KV_MOUNT:-secret}
KV_CAS_REQUIRED=${KV_CAS_REQUIRED:-false}
TRANSIT_MOUNT=${TRANSIT_MOUNT:-transit}
TRANSIT_KEY=${TRANSIT_KEY:-hubspot-tokens}
SIGNING_KEY_PREFIX=${SIGNING_KEY_PREFIX:-hubspot-token-broker-}
POLICY_DIR=${POLICY_DIR:-$(dirname "$0")}
TOKEN_TTL=${TOKEN_TTL:-24h}

say() { printf 'bootstrap: %s\n' "$*"; }
die() { printf 'bootstrap: error: %s\n' "$*" >&2; exit 1; }

# The server may still be starting (compose starts it just before this).
tries=0
until "$BAO" status >/dev/null 2>&1; do
  tries=$((tries + 1))
  [ "$tries" -lt 60 ] || die "no answer from ${BAO_ADDR:-${VAULT_ADDR:-the server}}"
  sleep 1
done

# --- KV v2 for client secrets --------------------------------------------------------------
if kind=$("$BAO" read -field=type "sys/mounts/$KV_MOUNT" 2>/dev/null); then
  options=$("$BAO" read -field=options "sys/mounts/$KV_MOUNT")
  case "$kind $options" in
    "kv "*version:2*) say "$KV_MOUNT/ is KV v2 already" ;;
    *) die "$KV_MOUNT/ is a $kind mount ($options), not KV v2" ;;
  esac
else
  "$BAO" secrets enable -path="$KV_MOUNT" -version=2 kv
fi
if [ "$KV_CAS_REQUIRED" = true ]; then
  "$BAO" write "$KV_MOUNT/config" cas_required=true >/dev/null
  say "$KV_MOUNT/ requires check-and-set"
fi

# --- Transit for tokens at rest ------------------------------------------------------------
if kind=$("$BAO" read -field=type "sys/mounts/$TRANSIT_MOUNT" 2>/dev/null); then
  [ "$kind" = transit ] || die "$TRANSIT_MOUNT/ is a $kind mount, not transit"
  say "$TRANSIT_MOUNT/ is transit already"
else
  "$BAO" secrets enable -path="$TRANSIT_MOUNT" transit
fi
if ! "$BAO" read "$TRANSIT_MOUNT/keys/$TRANSIT_KEY" >/dev/null 2>&1; then
  "$BAO" write -f "$TRANSIT_MOUNT/keys/$TRANSIT_KEY" type=aes256-gcm96 derived=true >/dev/null
fi
key_type=$("$BAO" read -field=type "$TRANSIT_MOUNT/keys/$TRANSIT_KEY")
derived=$("$BAO" read -field=derived "$TRANSIT_MOUNT/keys/$TRANSIT_KEY")
[ "$key_type $derived" = "aes256-gcm96 true" ] ||
  die "$TRANSIT_MOUNT/keys/$TRANSIT_KEY is $key_type derived=$derived, not aes256-gcm96 derived=true"
say "transit key $TRANSIT_MOUNT/keys/$TRANSIT_KEY: aes256-gcm96, derived"

# --- signing keys (sessions and CSRF, install links, fingerprints): HMAC only, in Vault ----
for purpose in session install-link fingerprint; do
  key="$TRANSIT_MOUNT/keys/$SIGNING_KEY_PREFIX$purpose"
  if ! "$BAO" read "$key" >/dev/null 2>&1; then
    "$BAO" write -f "$key" type=aes256-gcm96 >/dev/null
  fi
  [ "$("$BAO" read -field=type "$key")" = aes256-gcm96 ] || die "$key is not aes256-gcm96"
  [ "$("$BAO" read -field=exportable "$key") $("$BAO" read -field=allow_plaintext_backup "$key")" = "false false" ] ||
    die "$key may be exported or backed up: make a new key, this one is not secret any more"
  say "signing key $key: not exportable"
done

# --- policies ------------------------------------------------------------------------------
"$BAO" policy write hubspot-token-broker "$POLICY_DIR/broker.hcl"
"$BAO" policy write hubspot-token-broker-admin "$POLICY_DIR/broker-admin.hcl"
# Written, attached to nothing: add it to the replicas' role to manage them over HTTP.
"$BAO" policy write hubspot-token-broker-management "$POLICY_DIR/broker-management.hcl"
"$BAO" policy write hubspot-token-broker-key-custodian "$POLICY_DIR/broker-key-custodian.hcl"

# --- AppRoles with fixed credentials (dev) -------------------------------------------------
approle() { # role policy role_id secret_id
  if ! "$BAO" read "sys/auth/approle" >/dev/null 2>&1; then
    "$BAO" auth enable approle
  fi
  "$BAO" write "auth/approle/role/$1" token_policies="$2" token_ttl="$TOKEN_TTL" \
    token_max_ttl="$TOKEN_TTL" secret_id_ttl=0 >/dev/null
  "$BAO" write "auth/approle/role/$1/role-id" role_id="$3" >/dev/null
  # The lookup answers 204 (no output) for an unknown secret id.
  found=$("$BAO" write -format=json "auth/approle/role/$1/secret-id/lookup" secret_id="$4")
  if [ -z "$found" ]; then
    "$BAO" write "auth/approle/role/$1/custom-secret-id" secret_id="$4" >/dev/null
  fi
  say "approle $1 -> policy $2"
}
if [ -n "${BROKER_ROLE_ID:-}" ] && [ -n "${BROKER_SECRET_ID:-}" ]; then
  approle hubspot-token-broker hubspot-token-broker "$BROKER_ROLE_ID" "$BROKER_SECRET_ID"
fi
if [ -n "${ADMIN_ROLE_ID:-}" ] && [ -n "${ADMIN_SECRET_ID:-}" ]; then
  approle hubspot-token-broker-admin hubspot-token-broker-admin "$ADMIN_ROLE_ID" "$ADMIN_SECRET_ID"
fi
say "ready"
