"""What the portal modules share: the portal row's columns and identity, and the mapping of
rows to core models (one place, so every query returns the same shape)."""

from __future__ import annotations

import dataclasses
import functools
from typing import TYPE_CHECKING, Any, TypeVar

import asyncpg

from broker.core.models import PRIVATE_APP, App, Lease, PortalKey, PortalRecord, PortalState
from broker.core.ports import (
    DueLease,
    EncryptedGrant,
    JournalEntry,
    PendingRevocation,
    StoredCiphertext,
)

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

D = TypeVar("D", bound="DataclassInstance")

PORTAL_COLUMNS = """
    id, app, hub_id, user_id, hub_domain, scopes, state, refresh_ct, access_ct,
    access_expires_at, version, lease_epoch, failure_count, last_error, next_attempt_at,
    lease_until, installed_by, installed_at, updated_at, refreshed_at, revoked_at, access_fp,
    token_kind, previous_expires_at,
    clock_timestamp() AS db_now
"""
# Matches the unique index portals_identity.
IDENTITY = "app = $1 AND hub_id = $2 AND COALESCE(user_id, 0) = COALESCE($3::bigint, 0)"
SERVING = "state IN ('active', 'refresh_failing')"
#: What a claim returns to build its :class:`Lease` (``lease_of``).
LEASE_COLUMNS = """id, lease_epoch, version, refresh_ct, failure_count, lease_until,
                    clock_timestamp() AS now"""


def from_row(cls: type[D], row: asyncpg.Record, **given: Any) -> D:
    """A dataclass from the row's columns of its fields' names; ``given``: the fields that
    are not a column as it is (converted, or made of other columns)."""
    return cls(**{name: row[name] for name in _fields(cls) if name not in given}, **given)


@functools.cache
def _fields(cls: type[DataclassInstance]) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls))


def app_of(row: asyncpg.Record) -> App:
    return from_row(
        App, row, scopes=tuple(row["scopes"]), optional_scopes=tuple(row["optional_scopes"])
    )


def key_of(row: asyncpg.Record) -> PortalKey:
    """The portal named by a row's ``app``, ``hub_id`` and ``user_id``."""
    return PortalKey(row["app"], row["hub_id"], row["user_id"])


def portal_of(row: asyncpg.Record) -> PortalRecord:
    return from_row(
        PortalRecord,
        row,
        key=key_of(row),
        scopes=tuple(row["scopes"]),
        state=PortalState(row["state"]),
        private=row["token_kind"] == PRIVATE_APP,
    )


def lease_of(row: asyncpg.Record, owner: str) -> Lease:
    return Lease(
        portal_id=row["id"],
        owner=owner,
        epoch=row["lease_epoch"],
        version=row["version"],
        refresh_ct=row["refresh_ct"],
        failures=row["failure_count"],
        seconds=(row["lease_until"] - row["now"]).total_seconds(),
        db_now=row["now"],
    )


def due_lease_of(row: asyncpg.Record, owner: str) -> DueLease:
    """A ``claim_due`` row: the portal's identity and ``LEASE_COLUMNS``."""
    return DueLease(key_of(row), lease_of(row, owner))


def journal_entry_of(row: asyncpg.Record) -> JournalEntry:
    return JournalEntry(
        row["id"],
        EncryptedGrant(
            row["refresh_ct"], row["access_ct"], row["access_expires_at"], row["refresh_after"]
        ),
    )


def pending_revocation_of(row: asyncpg.Record) -> PendingRevocation:
    return PendingRevocation(row["id"], key_of(row), row["refresh_ct"], row["attempts"])


def stored_ciphertext_of(row: asyncpg.Record) -> StoredCiphertext:
    return StoredCiphertext(row["tbl"], row["id"], key_of(row), row["col"], row["ct"])


def key_args(key: PortalKey) -> tuple[Any, ...]:
    return (key.app, key.hub_id, key.user_id)


async def insert_event(
    conn: asyncpg.pool.PoolConnectionProxy, kind: str, key: PortalKey, payload: dict[str, Any]
) -> None:
    await conn.execute(
        "INSERT INTO events (type, app, hub_id, user_id, payload) VALUES ($1, $2, $3, $4, $5)",
        kind,
        *key_args(key),
        payload,
    )
