"""Transit key rotation (DESIGN.md, "Encryption at rest"): after ``rotate`` in Vault,
``broker keys rewrap`` re-encrypts every stored ciphertext under the latest key version —
batched, resumable (it only ever looks for what is still old), idempotent — and only when
none is left does it raise ``min_decryption_version``, retiring the old versions."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from broker.core.ports import AuditSink, CiphertextStore, KeyStore, StoredCiphertext
from broker.errors import Conflict, Undecryptable


@dataclass
class RewrapReport:
    latest_version: int
    rewrapped: int = 0
    skipped: int = 0  # rewritten by a refresh meanwhile (already at the latest version)
    failed: int = 0
    remaining: int = 0
    min_decryption_version: int = 1


class KeyRotation:
    """Rewraps and retirements are audited (``transit_key.rewrapped``, ``.retired``) when
    an ``actor`` is named."""

    def __init__(
        self, *, keys: KeyStore, store: CiphertextStore, audit: AuditSink | None = None
    ) -> None:
        self._keys = keys
        self._store = store
        self._audit = audit

    async def rewrap(
        self,
        *,
        batch: int = 200,
        limit: int | None = None,
        progress: Callable[[RewrapReport], None] | None = None,
        actor: str | None = None,
    ) -> RewrapReport:
        versions = await self._keys.key_versions()
        latest = versions.latest
        report = RewrapReport(latest, min_decryption_version=versions.min_decryption)
        bad: set[tuple[str, int, str]] = set()
        while limit is None or report.rewrapped + report.skipped < limit:
            size = batch if limit is None else min(batch, limit - report.rewrapped - report.skipped)
            rows = [
                r
                for r in await self._store.ciphertexts_below(
                    latest, after_id=0, limit=size + len(bad)
                )
                if (r.table, r.row_id, r.column) not in bad
            ][:size]
            if not rows:
                break
            try:
                fresh = await self._keys.rewrap([_rewrap_item(r) for r in rows])
            except Undecryptable:
                fresh = []
                for row in rows:  # find the bad ones; rewrap the rest
                    try:
                        (one,) = await self._keys.rewrap([_rewrap_item(row)])
                    except Undecryptable:
                        bad.add((row.table, row.row_id, row.column))
                        report.failed += 1
                        one = ""
                    fresh.append(one)
            for row, new in zip(rows, fresh, strict=True):
                if not new:
                    continue
                if await self._store.swap_ciphertext(
                    row.table, row.row_id, row.column, row.ciphertext, new
                ):
                    report.rewrapped += 1
                else:
                    report.skipped += 1
            if progress is not None:
                progress(report)
        report.remaining = len(
            await self._store.ciphertexts_below(latest, after_id=0, limit=1_000_000)
        )
        if actor is not None and self._audit is not None and report.rewrapped + report.failed:
            self._audit.record(
                "transit_key.rewrapped",
                actor=actor,
                version=latest,
                rewrapped=report.rewrapped,
                failed=report.failed,
                remaining=report.remaining,
            )
        return report

    async def retire_old_versions(self, *, actor: str | None = None) -> int:
        """Raise ``min_decryption_version`` to the latest version — only at 100% coverage."""
        latest = (await self._keys.key_versions()).latest
        if await self._store.ciphertexts_below(latest, after_id=0, limit=1):
            raise Conflict(
                "ciphertexts under older key versions remain: run `broker keys rewrap` first",
                code="rewrap_incomplete",
            )
        await self._keys.set_min_decryption_version(latest)
        if actor is not None and self._audit is not None:
            self._audit.record("transit_key.retired", actor=actor, min_decryption_version=latest)
        return latest


def _rewrap_item(row: StoredCiphertext) -> tuple[str, bytes]:
    """The ciphertext and its derivation context (the portal and the token kind)."""
    kind = "refresh" if row.column == "refresh_ct" else "access"
    return row.ciphertext, row.key.context(kind)
