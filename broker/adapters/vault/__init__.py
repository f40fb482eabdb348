"""Vault / OpenBao adapter: client secrets in KV v2, tokens and signing keys through Transit.
Implements ``Cipher``, ``SecretStore`` and ``MacService``.

Its parts, one module each: :mod:`.base` (the nodes, the broker's token, the HTTP client and
hvac's thread pool), :mod:`.auth` (login and renewal), :mod:`.kv` (client secrets),
:mod:`.transit` (encrypt, decrypt, rewrap, HMAC). The hot parts (Transit) run on the event
loop; the rare ones (login, renewal, KV) on hvac.
"""

from __future__ import annotations

from broker.adapters.vault.auth import VaultAuth
from broker.adapters.vault.kv import VaultSecrets
from broker.adapters.vault.transit import VaultTransit

__all__ = ["VaultAdapter"]


class VaultAdapter(VaultTransit, VaultSecrets, VaultAuth):
    """One Vault client for the whole replica (every part shares its nodes and token)."""
