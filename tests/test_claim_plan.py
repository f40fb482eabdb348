"""The refresher's claim stays an index scan that stops early, whatever the table's size:
``claim_due``'s own statement explained on 20,000 rows (the bench does 1,000,000)."""

from __future__ import annotations

import asyncio

from bench.claim_plan import claim_plan
from broker.dev.stack import BackendUrls


def test_claim_due_is_a_bounded_index_scan(backends: BackendUrls) -> None:
    plan = asyncio.run(claim_plan(backends.database_url, rows=20_000, due=100))

    assert plan.problems() == [], "\n\n".join(plan.plans.values())
    for case, text in plan.plans.items():
        assert "Index Scan using portals_refresh_after on portals" in text, case
    # Nothing due: the claim reads no index entry it then skips (a volatile bound read all).
    assert plan.skipped("caught up") == 0
    assert "rows=0" in plan.plans["caught up"].splitlines()[0]
