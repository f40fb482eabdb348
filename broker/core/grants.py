"""A token response made storable: both tokens encrypted for their portal and the access
token's audit fingerprint, made together when the tokens are obtained (an install, a refresh).

Storing the fingerprint with the row spares every later cache fill (on every replica) a
Transit ``hmac`` call: a miss is one row read and one decrypt, both shared with concurrent
misses. The fingerprint is optional: when Vault cannot make it now (its key missing, a
hiccup), the row stores none and a cache fill makes it, so the tokens are never lost for it.
"""

from __future__ import annotations

import asyncio
from datetime import datetime

import structlog

from broker.core.models import PortalKey, TokenGrant
from broker.core.ports import Cipher, EncryptedGrant
from broker.core.signing import Keyring
from broker.errors import VaultError

log = structlog.get_logger(__name__)


async def encrypt_grant(
    cipher: Cipher,
    keyring: Keyring | None,
    key: PortalKey,
    grant: TokenGrant,
    expires_at: datetime,
    refresh_after: datetime,
) -> EncryptedGrant:
    """One Transit encrypt for both tokens and, at the same time, one fingerprint (both
    shared with concurrent calls). Raises what the encrypt raises."""
    encrypting = cipher.encrypt(
        [
            (grant.refresh_token, key.context("refresh")),
            (grant.access_token, key.context("access")),
        ]
    )
    if keyring is None:
        refresh_ct, access_ct = await encrypting
        return EncryptedGrant(refresh_ct, access_ct, expires_at, refresh_after)
    (refresh_ct, access_ct), fingerprint = await asyncio.gather(
        encrypting, _fingerprint(keyring, grant.access_token)
    )
    return EncryptedGrant(refresh_ct, access_ct, expires_at, refresh_after, fingerprint)


async def _fingerprint(keyring: Keyring, access_token: str) -> str | None:
    """The fingerprint, or None (a cache fill makes it later): whatever goes wrong here must
    never cost the encrypted grant, whose refresh token may exist nowhere else yet."""
    try:
        return await keyring.fingerprint(access_token)
    except VaultError as exc:
        log.warning("grant.fingerprint_deferred", code=exc.code)
    except Exception:
        log.exception("grant.fingerprint_crashed")
    return None
