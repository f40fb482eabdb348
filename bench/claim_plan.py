"""``claim_due`` at 1,000,000 portal rows: the plan of the refresher's claim, from the very
statement the adapter runs (:data:`broker.adapters.postgres.leases.CLAIM_DUE_SQL`).

A scratch database is migrated and filled in one ``INSERT ... SELECT generate_series``
(realistic row widths: ciphertexts as long as real ones), analyzed, then the claim is run
under ``EXPLAIN (ANALYZE, BUFFERS)`` twice, each in a transaction rolled back:

* ``steady``: refresh times spread over the next hour, a few hundred already due;
* ``caught up``: nothing due (the refresher's idle scan, every second on every replica; in
  a steady state every claim that finds fewer due portals than its limit is one too).

Both must be index scans on ``portals_refresh_after`` (no ``Seq Scan on portals``), and the
idle one must touch a handful of buffers, not the table: a volatile bound (a bare
``clock_timestamp()``) cannot be an index condition and turns the idle claim into a walk of
the whole index.
"""

from __future__ import annotations

import re
import secrets
import time
from dataclasses import dataclass

import asyncpg

from broker.adapters.postgres.leases import CLAIM_DUE_SQL
from broker.adapters.postgres.migrate import migrate

_APP = "plan"
#: More index entries read and skipped than this by one claim: the scan is not bounded.
_MAX_SKIPPED = 1000
# `due` rows came due in the last 10 s; the others come due 10 to 70 minutes from now (the
# "caught up" case must still find none due after a slow load).
_FILL = """
INSERT INTO portals (app, hub_id, hub_domain, installed_by, scopes, refresh_ct, access_ct,
                     access_expires_at, refresh_after)
SELECT $1, g, 'hub-' || g || '.example.com', 'plan', ARRAY['oauth'],
       'vault:v1:' || repeat('r', 90), 'vault:v1:' || repeat('a', 700),
       now() + make_interval(secs => 1800),
       now() + make_interval(secs => CASE WHEN g <= $3 THEN -random() * 10
                                          ELSE 600 + random() * 3600 END)
FROM generate_series(1, $2) AS g
"""


@dataclass(frozen=True)
class ClaimPlan:
    rows: int
    load_seconds: float
    plans: dict[str, str]  # case -> EXPLAIN (ANALYZE, BUFFERS) text

    def problems(self) -> list[str]:
        """What is wrong with the plans (empty: every case is an index scan that stops early)."""
        found = []
        for case, plan in self.plans.items():
            if "Seq Scan on portals" in plan:
                found.append(f"{case}: Seq Scan on portals")
            if "Index Cond: (refresh_after <=" not in plan:
                found.append(f"{case}: refresh_after is not an index condition")
            if self.skipped(case) > _MAX_SKIPPED:
                found.append(f"{case}: {self.skipped(case):,} index entries read and skipped")
        return found

    def skipped(self, case: str) -> int:
        """Rows the claim's index scan read and filtered out (0 when none)."""
        lines = self.plans[case].splitlines()
        start = next((i for i, line in enumerate(lines) if "portals_refresh_after" in line), None)
        if start is None:
            return 0
        for line in lines[start + 1 :]:
            if line.lstrip().startswith(("->", "SubPlan")):
                break  # the node's own lines end where its children begin
            found = re.search(r"Rows Removed by Filter: (\d+)", line)
            if found:
                return int(found.group(1))
        return 0

    def execution_ms(self, case: str) -> float:
        found = re.search(r"Execution Time: ([0-9.]+) ms", self.plans[case])
        return float(found.group(1)) if found else 0.0


async def _plan(conn: asyncpg.Connection, *, generic: bool = False) -> str:
    """The claim under EXPLAIN ANALYZE, in a transaction rolled back (no lease is kept)."""
    transaction = conn.transaction()
    await transaction.start()
    try:
        if generic:  # what a prepared statement may switch to after its first executions
            await conn.execute("SET LOCAL plan_cache_mode = force_generic_plan")
        rows = await conn.fetch(f"EXPLAIN (ANALYZE, BUFFERS) {CLAIM_DUE_SQL}", "plan", 32, 30.0)
    finally:
        await transaction.rollback()
    return "\n".join(row[0] for row in rows)


async def claim_plan(admin_url: str, rows: int = 1_000_000, due: int = 500) -> ClaimPlan:
    """Fill a scratch database with ``rows`` portals (``due`` of them due), explain the claim,
    drop the database."""
    name = f"bench_plan_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(admin_url)
    try:
        await admin.execute(f"CREATE DATABASE {name}")
        url = admin_url.rsplit("/", 1)[0] + f"/{name}"
        conn = await asyncpg.connect(url)
        try:
            await migrate(conn)
            await conn.execute(
                "INSERT INTO apps (slug, client_id, redirect_uri) VALUES ($1, 'plan', 'x')", _APP
            )
            started = time.perf_counter()
            await conn.execute(_FILL, _APP, rows, due)
            await conn.execute("VACUUM ANALYZE portals")
            loaded = time.perf_counter() - started
            plans = {
                "steady": await _plan(conn),
                "steady, generic plan": await _plan(conn, generic=True),
            }
            await conn.execute(
                "UPDATE portals SET refresh_after = refresh_after + interval '1 hour' "
                "WHERE refresh_after <= now()"
            )
            await conn.execute("VACUUM ANALYZE portals")
            plans["caught up"] = await _plan(conn)
            plans["caught up, generic plan"] = await _plan(conn, generic=True)
        finally:
            await conn.close()
    finally:
        await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        await admin.close()
    return ClaimPlan(rows, loaded, plans)
