"""The rewrap job's view of every stored ciphertext (portals, the journal, pending revocations)
(part of ``PostgresPortals``)."""

from __future__ import annotations

from broker.adapters.postgres.pool import Database
from broker.adapters.postgres.rows import stored_ciphertext_of
from broker.core.ports import StoredCiphertext


class RewrapRows:
    _db: Database

    async def ciphertexts_below(
        self, version: int, *, after_id: int, limit: int
    ) -> list[StoredCiphertext]:
        rows = await self._db.fetch(
            """SELECT * FROM (
                   SELECT 'portals' AS tbl, id, app, hub_id, user_id, col, ct FROM portals,
                       LATERAL (VALUES ('refresh_ct', refresh_ct), ('access_ct', access_ct))
                       AS c(col, ct)
                   UNION ALL
                   SELECT 'token_journal', j.id, p.app, p.hub_id, p.user_id, col, ct
                   FROM token_journal j JOIN portals p ON p.id = j.portal_id,
                       LATERAL (VALUES ('refresh_ct', j.refresh_ct), ('access_ct', j.access_ct))
                       AS c(col, ct)
                   UNION ALL
                   SELECT 'pending_revocations', id, app, hub_id, user_id, 'refresh_ct',
                          refresh_ct FROM pending_revocations
               ) AS all_ct
               WHERE ct IS NOT NULL
                 AND split_part(ct, ':', 2) <> ''
                 AND substr(split_part(ct, ':', 2), 2)::int < $1
                 AND id > $2
               ORDER BY id, tbl, col
               LIMIT $3""",
            version,
            after_id,
            limit,
        )
        return [stored_ciphertext_of(r) for r in rows]

    async def swap_ciphertext(
        self, table: str, row_id: int, column: str, old: str, new: str
    ) -> bool:
        """Compare-and-set: a row a refresh rewrote meanwhile is left alone."""
        if table not in ("portals", "token_journal", "pending_revocations") or column not in (
            "refresh_ct",
            "access_ct",
        ):
            raise ValueError(f"not a ciphertext column: {table}.{column}")
        status = await self._db.execute(
            f"UPDATE {table} SET {column} = $3 WHERE id = $1 AND {column} = $2",
            row_id,
            old,
            new,
        )
        return status != "UPDATE 0"
