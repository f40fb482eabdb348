"""Signing keys: one per purpose, none readable by anyone, each rotatable with an overlap
(DESIGN.md, "Security: Keys").

Every purpose has its own Vault Transit key (``<BROKER_VAULT_SIGNING_KEY_PREFIX><purpose>``),
used only through Transit's ``hmac`` and ``verify`` endpoints: the key material never leaves
Vault, and no shipped policy may read, export or back it up (``deploy/vault/``). Operators
may *sign* with the install-link key (that is minting a link) and *rotate* every signing
key, nothing more; replicas sign and verify.

Rotation (``broker keys rotate-signing``, like a caller key's):

- Transit ``rotate`` makes a new version; from that moment every signature is made with it,
  on every replica (Transit signs with the latest version: nothing is cached here).
- The versions below it are recorded as retiring at ``now + overlap`` (the database clock):
  until then they still verify, from then on they are refused. A version that was never
  rotated away (no row) verifies; a retirement is never pushed later by a second rotation.

A MAC names the version that made it (:class:`Mac`, ``v<version>.<base64url>``), so a
verifier knows which version to check and whether it has retired. Inputs are separated per
use within a purpose by a label (:meth:`Keyring.sign` ``label``), so, e.g., a session's MAC
is never a valid CSRF token.

Adding a purpose: a member of :class:`Purpose`, its Transit key in ``bootstrap_vault`` /
``deploy/vault/bootstrap.sh`` and the policies, and a :meth:`Keyring.sign` /
:meth:`Keyring.verify` call with a label of its own.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from functools import partial
from typing import Any

from broker import metrics
from broker.core.batching import Coalescer
from broker.core.limits import Budget, Remembered
from broker.core.models import Mac
from broker.core.ports import AuditSink, KeySchedule, MacService
from broker.errors import InvalidRequest


class Purpose(StrEnum):
    """What a key signs; each has its own Transit key."""

    SESSION = "session"  # operator page sessions and their CSRF tokens (two labels)
    INSTALL_LINK = "install-link"  # operator-minted install links (operators may sign)
    FINGERPRINT = "fingerprint"  # short keyed fingerprints of tokens in the audit trail


#: Most inputs one Transit hmac call takes (OpenBao refuses batches of 250 or more).
_BATCH = 200
#: How long Vault's verdict on one MAC is remembered (a MAC is valid or not for good; the
#: retirement of its version is checked on every use).
REMEMBER_SECONDS = 300.0
#: MACs Vault has not judged yet, checked per second on this replica: install links and
#: session cookies arrive unauthenticated, and each new one would cost a Transit call.
VERIFY_RATE = 100.0


@dataclass(frozen=True, slots=True)
class KeyStatus:
    purpose: Purpose
    key: str
    latest_version: int
    retiring: dict[int, datetime]  # version -> when it stops (or stopped) verifying


def status_view(status: KeyStatus) -> dict[str, Any]:
    """What operators see of a signing key (never its material: Vault keeps it)."""
    return {
        "purpose": status.purpose.value,
        "key": status.key,
        "latest_version": status.latest_version,
        "retiring": {str(v): at.isoformat() for v, at in sorted(status.retiring.items())},
    }


class Keyring:
    """Signs and verifies for every purpose, through Vault (``macs``) and the retirement
    schedule (``schedule``, PostgreSQL)."""

    def __init__(
        self, *, macs: MacService, schedule: KeySchedule, key_prefix: str, audit: AuditSink
    ) -> None:
        self._macs = macs
        self._schedule = schedule
        self._prefix = key_prefix
        self._audit = audit
        self._genuine = Remembered(REMEMBER_SECONDS)
        self._forged = Remembered(REMEMBER_SECONDS)
        self._verifies = Budget(VERIFY_RATE)
        # Fingerprints are made per refresh (and per cache fill of an older row): concurrent
        # ones share Transit calls.
        self._batches = {
            purpose: Coalescer(partial(macs.hmac, self.key_name(purpose)), max_items=_BATCH)
            for purpose in Purpose
        }

    def key_name(self, purpose: Purpose) -> str:
        return f"{self._prefix}{purpose.value}"

    async def sign(
        self, purpose: Purpose, label: str, data: bytes, *, version: int | None = None
    ) -> Mac:
        """The MAC of ``data`` under ``purpose``'s latest key version (or ``version``, e.g.
        a CSRF token made with the version of the session it belongs to)."""
        if version is not None:
            (mac,) = await self._macs.hmac(
                self.key_name(purpose), [_input(label, data)], version=version
            )
            return mac
        (mac,) = await self._batches[purpose].submit([_input(label, data)])
        return mac

    async def fingerprint(self, token: str) -> str:
        """A short keyed fingerprint of a token: lets the audit trail correlate tokens
        without holding them (the fingerprint key's MAC, in Vault; comparable within one key
        version). Made when a token is obtained and stored with it (``broker.core.grants``);
        concurrent calls share Transit calls."""
        mac = await self.sign(Purpose.FINGERPRINT, "token", token.encode())
        return mac.digest.hex()[:16]

    async def check(self) -> None:
        """Reach Vault and the install-link key (the one both the replicas' and the
        operators' policies may sign with), so a wrong address, CA, token or a missing key
        fails at start, not at the first request. Raises :class:`~broker.errors.VaultError`."""
        await self.sign(Purpose.INSTALL_LINK, "startup-check", b"")

    async def seal(
        self, purpose: Purpose, label: str, payload: Mapping[str, object], *, bound_to: str = ""
    ) -> str:
        """``base64url(JSON payload) "." MAC``: the MAC covers the encoded payload and, when
        given, ``bound_to`` (a token that only opens under that same value)."""
        body = _b64(json.dumps(payload, separators=(",", ":"), sort_keys=True).encode())
        mac = await self.sign(purpose, label, _sealed(body, bound_to))
        return f"{body}.{mac}"

    async def open(
        self, purpose: Purpose, label: str, token: str, *, bound_to: str = ""
    ) -> object | None:
        """The JSON payload of a token :meth:`seal` made (same purpose, label and
        ``bound_to``; a key version not retired), else None. Its shape is the caller's to
        check."""
        body, dot, signature = token.partition(".")
        mac = Mac.parse(signature)
        if not dot or not body or mac is None:
            return None
        if not await self.verify(purpose, label, _sealed(body, bound_to), mac):
            return None
        try:
            payload: object = json.loads(_unb64(body))
        except (binascii.Error, ValueError):
            return None
        return payload

    async def verify(self, purpose: Purpose, label: str, data: bytes, mac: Mac) -> bool:
        """Whether ``mac`` is ``data``'s under a version of ``purpose``'s key that has not
        retired. Vault checks the MAC (an unknown or too-old version is simply invalid); its
        verdict is remembered, so a replayed cookie or a flood of one forged link costs one
        Transit call, and MACs it has not judged are limited to :data:`VERIFY_RATE` per second
        (429 ``verify_throttled`` beyond)."""
        signed = _input(label, data)
        seen = hashlib.sha256(f"{purpose.value}|{mac}|".encode() + signed).hexdigest()
        if seen in self._forged:
            return False
        if seen not in self._genuine:
            self._verifies.spend(
                time.monotonic(),
                "too many signatures to check right now; try again shortly",
                code="verify_throttled",
                counted=metrics.CALLER_AUTH_FAILURES.labels(metrics.AuthFailure.THROTTLED),
            )
            (valid,) = await self._macs.verify(self.key_name(purpose), [(signed, mac)])
            (self._genuine if valid else self._forged).add(seen)
            if not valid:
                return False
        return not await self._schedule.retired(purpose.value, mac.version)

    async def rotate(
        self, purposes: Sequence[Purpose], *, overlap_seconds: float, actor: str
    ) -> dict[Purpose, int]:
        """Rotate each key: the new version signs at once, the older ones verify for
        ``overlap_seconds`` more and are refused afterwards. Audited (``signing_key.rotated``).
        Returns the new version per purpose."""
        if overlap_seconds < 0:
            raise InvalidRequest(
                "the overlap must be >= 0 seconds",
                errors=[{"field": "overlap", "message": ">= 0"}],
            )
        rotated: dict[Purpose, int] = {}
        for purpose in purposes:
            latest = await self._macs.rotate(self.key_name(purpose))
            await self._schedule.retire_below(
                purpose.value, latest, overlap_seconds=overlap_seconds, actor=actor
            )
            self._audit.record(
                "signing_key.rotated",
                actor=actor,
                purpose=purpose.value,
                version=latest,
                overlap_seconds=overlap_seconds,
            )
            rotated[purpose] = latest
        return rotated

    async def status(self) -> list[KeyStatus]:
        schedule = await self._schedule.retirements()
        found = []
        for purpose in Purpose:
            latest = await self._macs.latest_version(self.key_name(purpose))
            retiring = {r.version: r.retires_at for r in schedule if r.purpose == purpose.value}
            found.append(KeyStatus(purpose, self.key_name(purpose), latest, retiring))
        return found


def _sealed(body: str, bound_to: str) -> bytes:
    return f"{bound_to}\n{body}".encode() if bound_to else body.encode()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _input(label: str, data: bytes) -> bytes:
    # The label is ASCII without "|": no two (label, data) pairs give one input.
    return label.encode() + b"|" + data
