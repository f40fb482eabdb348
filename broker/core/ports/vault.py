"""Vault: token encryption (Transit), client secrets (KV v2), MACs and key versions."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from broker.config import Secret
from broker.core.models import (
    Mac,
    PortalKey,
)


class Cipher(Protocol):
    """Envelope encryption of tokens (Vault Transit, derived key).

    ``context`` binds a ciphertext to one portal and token kind: decrypting with any other
    context fails with :class:`~broker.errors.VaultError` (code ``decrypt_failed``).
    """

    async def encrypt(self, items: Sequence[tuple[str, bytes]]) -> list[str]:
        """Encrypt ``(plaintext, context)`` pairs in one round trip, in order."""
        ...

    async def decrypt(self, items: Sequence[tuple[str, bytes]]) -> list[str]:
        """Decrypt ``(ciphertext, context)`` pairs in one round trip, in order."""
        ...


class SecretStore(Protocol):
    """App client secrets (Vault KV v2). Newest secret first; all are valid during rotation."""

    async def client_secrets(self, app: str, *, fresh: bool = False) -> list[Secret]:
        """Raises :class:`~broker.errors.NotFound` (``app_secret_missing``) when unset.
        Cached for minutes; ``fresh`` reads Vault now (after HubSpot rejected a secret)."""
        ...

    async def add_client_secret(self, app: str, secret: Secret) -> None:
        """Put ``secret`` first in the app's list (check-and-set, no lost update)."""
        ...

    async def ping(self) -> None: ...


class MacService(Protocol):
    """HMACs with keys that never leave the backend (Vault Transit ``hmac``/``verify``):
    ``key`` names the key; versions are the backend's (1, 2, ...)."""

    async def hmac(
        self, key: str, items: Sequence[bytes], *, version: int | None = None
    ) -> list[Mac]:
        """One MAC per item, with the latest version unless ``version`` is given."""
        ...

    async def verify(self, key: str, items: Sequence[tuple[bytes, Mac]]) -> list[bool]:
        """Whether each MAC is its input's; a version the key does not have (or no longer
        allows) is simply ``False``."""
        ...

    async def rotate(self, key: str) -> int:
        """Make a new latest version; returns it."""
        ...

    async def latest_version(self, key: str) -> int: ...


@dataclass(frozen=True, slots=True)
class Retirement:
    """When a signing key's version stops verifying (database clock)."""

    purpose: str
    version: int
    retires_at: datetime


class KeySchedule(Protocol):
    """When rotated-away signing key versions stop verifying (database clock)."""

    async def retire_below(
        self, purpose: str, version: int, *, overlap_seconds: float, actor: str
    ) -> None:
        """Versions below ``version`` with no retirement yet retire ``overlap_seconds`` from
        now; a retirement already set is never pushed later."""
        ...

    async def retired(self, purpose: str, version: int) -> bool:
        """Whether ``version`` has retired (its overlap is over)."""
        ...

    async def retirements(self) -> list[Retirement]: ...


@dataclass(frozen=True, slots=True)
class KeyVersions:
    """The Transit key's latest version and the oldest it still decrypts."""

    latest: int
    min_decryption: int


class KeyStore(Protocol):
    """The Transit key of tokens, for rotation: rewrap ciphertexts, read and retire versions."""

    async def rewrap(self, items: list[tuple[str, bytes]]) -> list[str]: ...

    async def key_versions(self) -> KeyVersions: ...

    async def set_min_decryption_version(self, version: int) -> None: ...


@dataclass(frozen=True, slots=True)
class StoredCiphertext:
    """One stored token ciphertext: where it is (table, row id, column) and whose it is."""

    table: str
    row_id: int
    key: PortalKey
    column: str
    ciphertext: str


class CiphertextStore(Protocol):
    """Every stored token ciphertext, for rewrapping: found by key version, swapped only
    while unchanged (a refresh meanwhile wins)."""

    async def ciphertexts_below(
        self, version: int, *, after_id: int, limit: int
    ) -> list[StoredCiphertext]:
        """Ciphertexts under a Transit key version older than ``version``, in (id, table,
        column) order from ``after_id``: the rewrap job walks them in batches and can resume
        anywhere."""
        ...

    async def swap_ciphertext(
        self, table: str, row_id: int, column: str, old: str, new: str
    ) -> bool: ...
