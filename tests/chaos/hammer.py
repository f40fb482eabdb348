"""One service calling HubSpot's CRM API for one portal at a fixed rate, open loop (a request
every 1/rate s whatever the answers), for the ``gateway_budget`` scenario; run as its own
process: ``python -m tests.chaos.hammer MODE KEY HUB RATE SECONDS URL [URL...]``.

``gateway``: through the broker's gateway, alternating between the replicas' URLs.
``direct``: a token from the token route (once), then HubSpot (the simulator, ``URL`` last)
directly, as services did before the gateway. Prints one JSON line: the answers by status
and the latencies of the 2xx ones."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections import Counter

import httpx

_CONTACTS = "/crm/v3/objects/contacts"


async def hammer(
    mode: str, key: str, hub: int, rate: float, seconds: float, urls: list[str]
) -> dict[str, object]:
    statuses: Counter[int] = Counter()
    latencies: list[float] = []
    limits = httpx.Limits(max_connections=400, max_keepalive_connections=400)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        headers = {"Authorization": f"Bearer {key}"}
        if mode == "direct":
            *brokers, hubspot = urls
            answer = await client.get(
                f"{brokers[0]}/v1/portals/{hub}/token", params={"min_ttl": 600}, headers=headers
            )
            answer.raise_for_status()
            headers = {"Authorization": f"Bearer {answer.json()['access_token']}"}
            targets = [f"{hubspot}{_CONTACTS}"]
        else:
            targets = [f"{url}/v1/portals/{hub}/hubspot{_CONTACTS}" for url in urls]

        async def one(url: str) -> None:
            started = time.monotonic()
            try:
                response = await client.get(url, params={"limit": "1"}, headers=headers)
            except httpx.TransportError:
                statuses[0] += 1
                return
            statuses[response.status_code] += 1
            if response.is_success:
                latencies.append(time.monotonic() - started)

        tasks = []
        start = time.monotonic()
        sent = 0
        while (now := time.monotonic()) - start < seconds:
            due = int((now - start) * rate) + 1
            while sent < due:
                tasks.append(asyncio.create_task(one(targets[sent % len(targets)])))
                sent += 1
            await asyncio.sleep(max(0.0, start + sent / rate - time.monotonic()))
        await asyncio.gather(*tasks)
    return {"sent": sent, "statuses": dict(statuses), "latencies": latencies}


def main() -> None:
    mode, key, hub, rate, seconds, *urls = sys.argv[1:]
    result = asyncio.run(hammer(mode, key, int(hub), float(rate), float(seconds), urls))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
