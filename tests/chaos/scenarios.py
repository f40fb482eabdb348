"""Fault scenarios on real processes. Each takes a :class:`Size` and returns a
:class:`Result` whose ``problems`` list what broke a promise; figures are reported, and only
the promises (counts, states, bounds) are asserted."""

from __future__ import annotations

import math
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx
import redis

from broker.core.models import PortalKey
from broker.dev.simulator import Simulator
from tests.chaos.cluster import OPENED, Answer, Cluster, Replica, open_cluster, percentile
from tests.chaos.gateway_budget import run as gateway_budget_run
from tests.helpers import decrypt

# Short leases so takeovers happen in seconds: 0.5 (vault) + 3 (hubspot) + 2 x 0.5 (db) + 1.
FAST_LEASE = {
    "BROKER_LEASE_SECONDS": "6",
    "BROKER_HUBSPOT_TIMEOUT": "3",
    "BROKER_DB_TIMEOUT": "0.5",
    "BROKER_VAULT_TIMEOUT": "0.5",
}


@dataclass(frozen=True)
class Size:
    portals: int
    callers: int
    #: How long load scenarios run (gateway_budget: 60 s, the issue's promise).
    seconds: float = 60.0


SMALL = Size(portals=3, callers=20, seconds=3.0)  # make test
DEFAULT = Size(portals=50, callers=50)  # make chaos: every promise, well under 45 minutes


@dataclass
class Result:
    name: str
    figures: dict[str, float | int | str] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.problems

    def line(self) -> str:
        shown = " ".join(f"{k}={v}" for k, v in self.figures.items())
        verdict = "ok" if self.passed else "FAILED: " + "; ".join(self.problems)
        return f"{self.name}: {verdict} {shown}"


Env = dict[str, str]
Scenario = Callable[[Env, Simulator, str, Size], Result]
HUB_BASE = 9_000_000


def _herd_cycle(c: Cluster, size: Size, result: Result, hubs: list[int]) -> list[float]:
    """Every hub is stale for min_ttl=600; one herd per hub must cause one refresh."""
    waits: list[float] = []
    errors = 0
    for hub in hubs:
        before = c.sim.refreshes_by_hub().get(hub, 0)
        answers = c.herd(hub, size.callers, min_ttl=600)
        errors += sum(a.status != 200 for a in answers)
        tokens = {a.token for a in answers if a.status == 200}
        refreshes = c.sim.refreshes_by_hub().get(hub, 0) - before
        if refreshes != 1:
            result.problems.append(f"hub {hub}: {refreshes} upstream refreshes, wanted 1")
        if len(tokens) > 1:
            result.problems.append(f"hub {hub}: callers got {len(tokens)} different tokens")
        waits += [a.seconds for a in answers]
    if errors:
        codes = sorted({f"{a.status}:{a.body.get('code')}" for a in answers if a.status != 200})
        result.problems.append(f"{errors} caller errors ({', '.join(codes)})")
    result.figures.update(
        portals=len(hubs),
        callers_each=size.callers,
        replicas=len(c.replicas),
        caller_errors=errors,
        wait_p50_ms=round(percentile(waits, 0.5) * 1000, 1),
        wait_p99_ms=round(percentile(waits, 0.99) * 1000, 1),
    )
    return waits


def _stale_portals(c: Cluster, hubs: list[int]) -> None:
    c.sim.configure(access_token_ttl=300)  # below min_ttl=600: every first ask refreshes
    c.install(hubs)
    c.sim.configure(access_token_ttl=1800)


def herd(env: Env, sim: Simulator, sim_url: str, size: Size) -> Result:
    result = Result("herd")
    c = open_cluster(env, sim, sim_url, replicas=3)
    try:
        hubs = [HUB_BASE + i for i in range(size.portals)]
        _stale_portals(c, hubs)
        sim.configure(latency_ms={"token": 50})
        _herd_cycle(c, size, result, hubs)
        result.figures["simulator_latency_ms"] = 50
    finally:
        c.close()
    return result


def _redis_fault(mode: str) -> Scenario:
    def scenario(env: Env, sim: Simulator, sim_url: str, size: Size) -> Result:
        result = Result(f"redis_{mode}")
        c = open_cluster(env, sim, sim_url, replicas=3)
        try:
            hubs = [HUB_BASE + i for i in range(size.portals * 2)]
            _stale_portals(c, hubs)
            baseline = Result("baseline")
            healthy = _herd_cycle(c, size, baseline, hubs[: size.portals])
            c.redis_proxy.set(mode)  # type: ignore[arg-type]
            faulty = _herd_cycle(c, size, result, hubs[size.portals :])
            added = percentile(faulty, 0.5) - percentile(healthy, 0.5)
            result.figures["added_p50_ms"] = round(added * 1000, 1)
        finally:
            c.close()
        return result

    return scenario


def flushall_mid_lock(env: Env, sim: Simulator, sim_url: str, size: Size) -> Result:
    result = Result("redis_flushall_mid_lock")
    c = open_cluster(env, sim, sim_url, replicas=3)
    try:
        hubs = [HUB_BASE + i for i in range(size.portals)]
        _stale_portals(c, hubs)
        sim.configure(latency_ms={"token": 1500})
        direct = redis.Redis.from_url(env["BROKER_REDIS_URL"])
        for hub in hubs:
            timer = threading.Timer(0.5, direct.flushall)
            timer.start()
            _herd_cycle(c, Size(1, size.callers), result, [hub])
            timer.join()
        direct.close()
        result.figures["portals"] = len(hubs)
    finally:
        c.close()
    return result


def paused_holder(env: Env, sim: Simulator, sim_url: str, size: Size) -> Result:
    """SIGSTOP the replica that is refreshing, past its lease, with rotation on."""
    result = Result("paused_holder_rotation")
    c = open_cluster(env, sim, sim_url, replicas=2, **FAST_LEASE)
    holder, other = c.replicas
    false_reauth = 0
    try:
        for i in range(max(1, size.portals // 3)):
            hub = HUB_BASE + i
            _stale_portals(c, [hub])
            sim.configure(rotate_refresh_tokens=True, latency_ms={"token": 1500})
            [before] = c.sql("SELECT version FROM portals WHERE hub_id = $1", hub)
            asker = threading.Thread(target=c.ask, args=(holder, hub, 600))
            asker.start()
            time.sleep(0.6)  # the holder has its lease and is waiting for HubSpot
            holder.stop()
            time.sleep(6.5)  # past the 6 s lease
            taker = threading.Thread(target=c.ask, args=(other, hub, 600))
            taker.start()
            time.sleep(2.5)  # the taker saw the holder's unanswered call and backed off
            holder.resume()
            taker.join(30)
            asker.join(30)
            [row] = c.sql("SELECT state, version, refresh_ct FROM portals WHERE hub_id = $1", hub)
            reauth_events = c.sql(
                "SELECT count(*) AS n FROM events WHERE type = 'portal.needs_reauth' "
                "AND hub_id = $1",
                hub,
            )[0]["n"]
            false_reauth += int(reauth_events > 0 or row["state"] != "active")
            stored = _refresh_token(c, hub, row["refresh_ct"])
            if not sim.is_refresh_token_valid(stored):
                result.problems.append(f"hub {hub}: stored refresh token is dead at HubSpot")
            if row["version"] <= before["version"]:
                result.problems.append(f"hub {hub}: version did not move on")
            sim.configure(rotate_refresh_tokens=False, latency_ms={})
        if false_reauth:
            result.problems.append(f"{false_reauth} false needs_reauth")
        result.figures.update(portals=max(1, size.portals // 3), false_needs_reauth=false_reauth)
    finally:
        holder.resume()
        c.close()
    return result


def _refresh_token(c: Cluster, hub: int, ciphertext: str) -> str:
    import asyncio

    return asyncio.run(decrypt(c.settings, ciphertext, PortalKey(c.app, hub), "refresh"))


def crash_points(env: Env, sim: Simulator, sim_url: str, size: Size) -> Result:
    """kill -9 at (a) after the lease claim, (b) after HubSpot answered, (c) after the
    journal write, with rotation on; another replica must take over within lease + 1 s."""
    result = Result("kill9_crash_points")
    c = open_cluster(env, sim, sim_url, replicas=1, **FAST_LEASE)
    survivor = c.replicas[0]
    lost: dict[str, int] = {}
    try:
        for index, point in enumerate(("after_claim", "after_hubspot", "after_journal")):
            hub = HUB_BASE + index
            _stale_portals(c, [hub])
            sim.configure(rotate_refresh_tokens=True)
            victim = c.add_replica(crash_point=point)
            died = c.ask(victim, hub, min_ttl=600, timeout=15)
            victim.kill()
            c.replicas.remove(victim)
            if died.status != 0:
                result.problems.append(f"{point}: the victim answered {died.status}")
            dead_at = time.monotonic()
            answer = c.ask(survivor, hub, min_ttl=600, timeout=30)
            takeover = time.monotonic() - dead_at
            result.figures[f"takeover_{point}_s"] = round(takeover, 2)
            # lease + 1 s; at (b) the taker also waits out its grace for the dead holder's
            # journal row before giving up (reported, not asserted).
            if point != "after_hubspot" and takeover > 6 + 1:
                result.problems.append(f"{point}: takeover took {takeover:.1f} s")
            lost[point] = int(answer.status != 200)
            sim.configure(rotate_refresh_tokens=False)
        result.figures.update({f"lost_{k}": v for k, v in lost.items()})
        for point in ("after_claim", "after_journal"):
            if lost[point]:
                result.problems.append(f"{point}: token lost")
        # (b) is the documented residual risk: reported, not asserted.
    finally:
        c.close()
    return result


def hubspot_outage(env: Env, sim: Simulator, sim_url: str, size: Size) -> Result:
    """HubSpot answers 503 for a window while callers keep asking and the refresher keeps
    trying: no token is ever served past its expiry, calls back off, and every portal is
    refreshed again within 60 s of HubSpot coming back."""
    result = Result("hubspot_outage")
    window = 12.0 if size.portals <= SMALL.portals else 60.0
    c = open_cluster(
        env,
        sim,
        sim_url,
        replicas=1,
        BROKER_REFRESHER_ENABLED="true",
        BROKER_REFRESHER_INTERVAL="0.2",
    )
    replica = c.replicas[0]
    try:
        hubs = [HUB_BASE + i for i in range(min(size.portals, 20))]
        sim.configure(access_token_ttl=8)
        c.install(hubs)
        sim.add_fault("token", status=503)
        before = dict(sim.refreshes_by_hub())
        served_dead = served = unavailable = 0
        end = time.monotonic() + window
        while time.monotonic() < end:
            for hub in hubs:
                answer = c.ask(replica, hub, min_ttl=0)
                if answer.status == 200:
                    served += 1
                    info = sim.access_token_info(answer.token or "")
                    if info is None or not info.active:
                        served_dead += 1
                elif answer.status == 503:
                    unavailable += 1
            time.sleep(0.5)
        calls = [sim.refreshes_by_hub().get(h, 0) - before.get(h, 0) for h in hubs]
        sim.clear_faults()
        recovered_at = time.monotonic()
        pending = set(hubs)
        while pending and time.monotonic() - recovered_at < 70:
            rows = c.sql(
                "SELECT hub_id FROM portals WHERE state = 'active' AND access_expires_at > now()"
            )
            pending -= {r["hub_id"] for r in rows}
            time.sleep(0.5)
        recovery = time.monotonic() - recovered_at
        ceiling = int(math.log2(window)) + 3  # exponential backoff from ~1 s, capped
        result.figures.update(
            portals=len(hubs),
            window_s=window,
            served=served,
            served_expired=served_dead,
            answered_503=unavailable,
            max_calls_per_portal=max(calls),
            recovery_s=round(recovery, 1),
        )
        if served_dead:
            result.problems.append(f"{served_dead} tokens served past expiry")
        if max(calls) > ceiling:
            result.problems.append(f"{max(calls)} calls for one portal in {window:g} s")
        if pending:
            result.problems.append(f"{len(pending)} portals not recovered after 70 s")
        elif recovery > 60:
            result.problems.append(f"recovery took {recovery:.0f} s")
    finally:
        c.close()
    return result


def _dead_grant(redis_mode: str, bound: float) -> Scenario:
    def scenario(env: Env, sim: Simulator, sim_url: str, size: Size) -> Result:
        """HubSpot kills a grant: the replica that meets invalid_grant marks the portal
        needs_reauth, every replica answers 409 within ``bound`` s, and no replica calls
        HubSpot for that portal again."""
        result = Result(f"invalid_grant_redis_{redis_mode}")
        c = open_cluster(env, sim, sim_url, replicas=3)
        try:
            share = 3 if redis_mode == "pass" else 30  # see _revoke: each waits out the poll
            hubs = [HUB_BASE + i for i in range(max(1, size.portals // share))]
            worst = 0.0
            for hub in hubs:
                # Installed just before its turn, with a 300 s token, so min_ttl=600 forces a
                # refresh: installed all at once, the later portals' tokens expired before
                # their turn and the asks below refreshed them to 1800 s (full size).
                _stale_portals(c, [hub])
                for replica in c.replicas:  # every replica caches a token
                    assert c.ask(replica, hub).status == 200
                c.redis_proxy.set(redis_mode)  # type: ignore[arg-type]
                sim.kill_grant(hub)
                c.killed.add(hub)
                first = c.ask(c.replicas[0], hub, min_ttl=600)
                if first.status != 409:
                    result.problems.append(f"hub {hub}: first caller got {first.status}")
                marked = time.monotonic()
                calls = sim.refreshes_by_hub().get(hub, 0)
                waiting = set(range(1, len(c.replicas)))
                while waiting and time.monotonic() - marked < bound + 5:
                    for i in list(waiting):
                        if c.ask(c.replicas[i], hub).status == 409:
                            waiting.discard(i)
                    time.sleep(0.05)
                took = time.monotonic() - marked
                worst = max(worst, took)
                if waiting or took > bound:
                    result.problems.append(f"hub {hub}: replicas served it {took:.1f} s on")
                for replica in c.replicas:
                    c.ask(replica, hub, min_ttl=600)
                if sim.refreshes_by_hub().get(hub, 0) != calls:
                    result.problems.append(f"hub {hub}: HubSpot called after needs_reauth")
                c.redis_proxy.set("pass")
            result.figures.update(portals=len(hubs), replicas=3, worst_409_s=round(worst, 2))
        finally:
            c.close()
        return result

    return scenario


def _revoke(redis_mode: str, bound: float) -> Scenario:
    def scenario(env: Env, sim: Simulator, sim_url: str, size: Size) -> Result:
        """An operator revokes a portal on one replica: every replica stops serving it
        within ``bound`` s of the call returning, and HubSpot no longer honours the token."""
        result = Result(f"revoke_redis_{redis_mode}")
        c = open_cluster(env, sim, sim_url, replicas=3)
        try:
            # With Redis down each portal waits out the poll bound: a tenth as many portals
            # (33 at full size, ~3 min) measure the same bound.
            share = 3 if redis_mode == "pass" else 30
            hubs = [HUB_BASE + i for i in range(max(1, size.portals // share))]
            c.install(hubs)
            worst = 0.0
            for hub in hubs:
                for replica in c.replicas:
                    assert c.ask(replica, hub).status == 200
                [row] = c.sql("SELECT refresh_ct FROM portals WHERE hub_id = $1", hub)
                refresh = _refresh_token(c, hub, row["refresh_ct"])
                c.redis_proxy.set(redis_mode)  # type: ignore[arg-type]
                response = httpx.post(
                    f"{c.replicas[0].url}/v1/admin/portals/{hub}/revoke",
                    params={"app": c.app},
                    json={"reason": "chaos drill"},
                    headers={"Authorization": f"Bearer {c.key}"},
                    timeout=30,
                )
                returned = time.monotonic()
                if response.status_code != 200 or response.json()["upstream"] != "revoked":
                    result.problems.append(f"hub {hub}: revoke answered {response.text[:200]}")
                last_served = returned
                serving = set(range(len(c.replicas)))
                while serving and time.monotonic() - returned < bound + 5:
                    for i in list(serving):
                        answer = c.ask(c.replicas[i], hub)
                        if answer.status == 200:
                            last_served = time.monotonic()
                        elif answer.status == 410:
                            serving.discard(i)
                    time.sleep(0.05)
                late = last_served - returned
                worst = max(worst, late)
                if serving or late > bound:
                    result.problems.append(f"hub {hub}: served {late:.2f} s after the revoke")
                if sim.is_refresh_token_valid(refresh):
                    result.problems.append(f"hub {hub}: HubSpot still honours the refresh token")
                c.redis_proxy.set("pass")
            result.figures.update(
                portals=len(hubs), replicas=3, worst_served_after_revoke_s=round(worst, 2)
            )
        finally:
            c.close()
        return result

    return scenario


def audit_loss(env: Env, sim: Simulator, sim_url: str, size: Size) -> Result:
    """kill -9 a replica that is serving tokens: audit events are written in batches every
    0.5 s, so what may be lost is bounded by that window; everything answered earlier than
    one second before the kill must be in the trail."""
    result = Result("audit_loss_on_kill9")
    c = open_cluster(env, sim, sim_url, replicas=1)
    replica = c.replicas[0]
    try:
        hub = HUB_BASE
        c.install([hub])
        answered: list[float] = []
        stop = time.monotonic() + (3.0 if size.portals <= SMALL.portals else 10.0)
        while time.monotonic() < stop:
            for answer in c.herd(hub, 20, min_ttl=0):
                if answer.status == 200:
                    answered.append(time.monotonic())
        replica.kill()
        killed = time.monotonic()
        audited = c.sql(  # token issues are tallied: one event per flush window, with a count
            "SELECT coalesce(sum((detail->>'count')::int), 0) AS n FROM audit_events"
            " WHERE action = 'token.issued' AND hub_id = $1",
            hub,
        )[0]["n"]
        must_have = sum(1 for t in answered if t < killed - 1.0)
        lost = len(answered) - audited
        result.figures.update(
            served=len(answered), audited=audited, lost=lost, flush_interval_s=0.5
        )
        if audited < must_have:
            result.problems.append(
                f"{must_have - audited} events older than 1 s before the kill are missing"
            )
    finally:
        c.close()
    return result


def fenced_holder(env: Env, sim: Simulator, sim_url: str, size: Size) -> Result:
    """A holder stopped right after HubSpot answered. Its lease runs out: asked then, the
    survivor must not call HubSpot (the holder's call is unanswered); once the answer window
    has passed, the survivor refreshes the portal twice. Resumed, the holder's fenced write
    loses, and it answers its caller with its own token: the expiry it reports must be that
    token's (checked against the simulator), never the newer row's; asked again, it serves a
    token HubSpot honours for the min_ttl asked. (The holder carries its own expiry; besides,
    the cached expiry is translated from a reading taken before the load began.)"""
    result = Result("paused_holder_asked_after_resume")
    c = open_cluster(env, sim, sim_url, replicas=1, **FAST_LEASE)
    survivor = c.replicas[0]
    try:
        hub = HUB_BASE + 700
        sim.configure(access_token_ttl=120)  # below min_ttl=200: every ask refreshes
        c.install([hub])
        holder = c.add_replica(crash_point="after_hubspot", pause=True)
        answers: list[Answer] = []
        asker = threading.Thread(target=lambda: answers.append(c.ask(holder, hub, 200, 60)))
        asker.start()
        deadline = time.monotonic() + 15
        while not holder.stopped():
            if time.monotonic() > deadline:
                raise RuntimeError("the holder never reached after_hubspot")
            time.sleep(0.05)
        time.sleep(6.5)  # past its 6 s lease
        calls = sim.refreshes_by_hub().get(hub, 0)
        c.ask(survivor, hub, 200)  # within the answer window: no second call
        result.figures["calls_while_unanswered"] = sim.refreshes_by_hub().get(hub, 0) - calls
        if result.figures["calls_while_unanswered"]:
            result.problems.append("the survivor called HubSpot while a call was unanswered")
        time.sleep(17.0)  # past the answer window (3 leases + the refresh budget, ~23 s)
        newer = [c.ask(survivor, hub, 200) for _ in range(2)]
        time.sleep(1.0)  # the row's expiry is now well past the stopped holder's token's
        holder.resume()
        asker.join(60)
        [row] = c.sql("SELECT version FROM portals WHERE hub_id = $1", hub)
        answer = answers[0]
        if answer.status != 200 or answer.token is None:
            result.problems.append(f"the resumed holder answered {answer.status}")
            return result
        actual = sim.access_token_info(answer.token)
        reported = int(answer.body["expires_in"])
        real = -1 if actual is None else actual.expires_in
        result.figures.update(
            reported_expires_in=reported, hubspot_expires_in=real, row_version=row["version"]
        )
        if any(a.status != 200 for a in newer):
            result.problems.append("the survivor's refreshes failed")
        if reported > real + 1:
            result.problems.append(f"reported {reported} s left, HubSpot says {real} s")
        # Asked again after it resumed, it must not serve from what it held while stopped
        # (each answer is checked against the simulator by the cluster).
        again = [c.ask(holder, hub, 200) for _ in range(3)]
        result.figures["asked_after_resume"] = sum(a.status == 200 for a in again)
        if any(a.status != 200 for a in again):
            result.problems.append(f"asked after resume: {[a.status for a in again]}")
    finally:
        sim.configure(access_token_ttl=1800)
        c.close()
    return result


def slow_hubspot_batch(env: Env, sim: Simulator, sim_url: str, size: Size) -> Result:
    """Two refreshers claim a batch of due portals each, then work through it two at a time
    against a HubSpot that takes 2 s: a lease that ran out while it waited for its slot
    must not call HubSpot (another replica may have claimed the portal by then). Every
    upstream refresh call must land as exactly one committed version."""
    result = Result("slow_hubspot_batch")
    refresher = {
        **FAST_LEASE,
        "BROKER_REFRESHER_ENABLED": "true",
        "BROKER_REFRESHER_INTERVAL": "0.2",
        "BROKER_REFRESHER_BATCH": "8",
        "BROKER_REFRESHER_CONCURRENCY": "2",
        "BROKER_REFRESH_RATE_PER_APP": "1000",
        "BROKER_REFRESH_RATE_MAX": "1000",
    }
    c = open_cluster(env, sim, sim_url, replicas=2, **refresher)
    try:
        hubs = [HUB_BASE + 800 + i for i in range(max(8, size.portals * 3))]
        c.install(hubs)
        before = {r["hub_id"]: r["version"] for r in c.sql("SELECT hub_id, version FROM portals")}
        calls_before = sim.refreshes_by_hub()
        sim.configure(latency_ms={"token": 2000})
        c.sql("UPDATE portals SET refresh_after = now()")  # all due at once, on both replicas
        time.sleep(7)  # four waves of two: the last ones wait past the 6 s lease
        sim.configure(latency_ms={})
        time.sleep(2.5)  # the last calls land
        after = {r["hub_id"]: r["version"] for r in c.sql("SELECT hub_id, version FROM portals")}
        calls = sim.refreshes_by_hub()
        extra = 0
        for hub in hubs:
            made = calls.get(hub, 0) - calls_before.get(hub, 0)
            committed = after[hub] - before[hub]
            extra += max(0, made - committed)
        result.figures.update(
            portals=len(hubs),
            upstream_calls=sum(calls.get(h, 0) - calls_before.get(h, 0) for h in hubs),
            versions=sum(after[h] - before[h] for h in hubs),
            calls_without_a_version=extra,
        )
        if extra:
            result.problems.append(f"{extra} upstream calls landed no version (duplicates)")
    finally:
        c.close()
    return result


def _revoke_on(c: Cluster, replica: Replica, hub: int) -> httpx.Response:
    return httpx.post(
        f"{replica.url}/v1/admin/portals/{hub}/revoke",
        params={"app": c.app},
        json={"reason": "chaos drill"},
        headers={"Authorization": f"Bearer {c.key}"},
        timeout=30,
    )


def _install_short(c: Cluster, sim: Simulator, hub: int, ttl: int) -> None:
    """Install ``hub`` with an access token of ``ttl`` seconds."""
    sim.configure(access_token_ttl=ttl)
    try:
        c.install([hub])
    finally:
        sim.configure(access_token_ttl=1800)


def revoke_during_slow_refresh(env: Env, sim: Simulator, sim_url: str, size: Size) -> Result:
    """R1 refreshes a portal whose token has 250 s left for a caller asking min_ttl=300,
    against a HubSpot slower than the broker's timeout; an operator revokes the portal
    through R2 meanwhile. After the revoke returned, R1 serves nothing of it: neither the
    slow caller's answer (it ends after the revoke) nor 30 requests over 15 s."""
    result = Result("revoke_during_slow_refresh")
    c = open_cluster(env, sim, sim_url, replicas=2, **FAST_LEASE)
    r1, r2 = c.replicas
    portals = max(1, size.portals // 200)
    served_after = asked_after = 0
    try:
        for i in range(portals):
            hub = HUB_BASE + 900 + i
            _install_short(c, sim, hub, 250)
            if c.ask(r1, hub).status != 200:  # R1 caches it
                result.problems.append(f"hub {hub}: not served before the revoke")
            sim.configure(latency_ms={"token": 12_000})  # longer than the 3 s timeout
            caller, slow = _asking(c, r1, hub, 300)
            time.sleep(0.5)  # R1's refresh is waiting on HubSpot
            response = _revoke_on(c, r2, hub)
            if response.status_code != 200:
                result.problems.append(f"hub {hub}: revoke answered {response.status_code}")
            caller.join(40)
            answers = slow + [c.ask(r1, hub, (0, 300)[n % 2]) for n in range(30) if _pause(0.5)]
            asked_after += len(answers)
            served_after += sum(a.status == 200 for a in answers)
            sim.configure(latency_ms={})
        result.figures.update(
            portals=portals, asked_after_revoke=asked_after, served_after_revoke=served_after
        )
        if served_after:
            result.problems.append(f"{served_after} answers served a revoked portal's token")
    finally:
        sim.configure(latency_ms={})
        c.close()
    return result


def _asking(
    c: Cluster, replica: Replica, hub: int, min_ttl: int
) -> tuple[threading.Thread, list[Answer]]:
    """A caller asking in a thread of its own (started); its answer lands in the list."""
    got: list[Answer] = []
    caller = threading.Thread(target=lambda: got.append(c.ask(replica, hub, min_ttl, 60)))
    caller.start()
    return caller, got


def _pause(seconds: float) -> bool:
    time.sleep(seconds)
    return True


def _grant_kept(c: Cluster, sim: Simulator, hub: int) -> bool:
    """The portal's stored refresh token, or a newer journaled one, is live at HubSpot."""
    [row] = c.sql("SELECT id, version, refresh_ct FROM portals WHERE hub_id = $1", hub)
    rows = c.sql(
        "SELECT refresh_ct FROM token_journal WHERE portal_id = $1 AND applied_at IS NULL "
        "AND base_version >= $2",
        row["id"],
        row["version"],
    )
    stored = [row["refresh_ct"], *(r["refresh_ct"] for r in rows)]
    return any(
        sim.is_refresh_token_valid(_refresh_token(c, hub, ct)) for ct in stored if ct is not None
    )


def postgres_blackhole_after_hubspot(env: Env, sim: Simulator, sim_url: str, size: Size) -> Result:
    """HubSpot answers a refresh (rotating the refresh token) while PostgreSQL is blackholed
    for longer than the lease (8 s against 6 s): the holder keeps the answer, journals it
    when PostgreSQL is back (it may, for two more leases) and commits it. 0 lost tokens (each
    checked at the simulator), 0 false needs_reauth."""
    result = Result("postgres_blackhole_after_hubspot")
    c = open_cluster(env, sim, sim_url, replicas=1, postgres_proxy=True, **FAST_LEASE)
    assert c.db_proxy is not None
    holder = c.replicas[0]
    portals = max(1, size.portals // 200)
    lost = false_reauth = answered = 0
    try:
        for i in range(portals):
            hub = HUB_BASE + 950 + i
            _install_short(c, sim, hub, 120)
            sim.configure(rotate_refresh_tokens=True, latency_ms={"token": 1500})
            caller, got = _asking(c, holder, hub, 200)
            time.sleep(0.5)  # the holder has its lease and waits for HubSpot
            c.db_proxy.set("blackhole")
            time.sleep(8.0)
            c.db_proxy.set("pass")
            caller.join(60)
            sim.configure(rotate_refresh_tokens=False, latency_ms={})
            answered += sum(a.status == 200 for a in got)
            [row] = c.sql("SELECT state FROM portals WHERE hub_id = $1", hub)
            false_reauth += row["state"] == "needs_reauth"
            lost += not _grant_kept(c, sim, hub)
        result.figures.update(
            portals=portals, answered=answered, lost_tokens=lost, false_needs_reauth=false_reauth
        )
        if lost:
            result.problems.append(f"{lost} refresh tokens lost")
        if false_reauth:
            result.problems.append(f"{false_reauth} false needs_reauth")
    finally:
        sim.configure(rotate_refresh_tokens=False, latency_ms={})
        c.close()
    return result


def sigterm_during_store(env: Env, sim: Simulator, sim_url: str, size: Size) -> Result:
    """SIGTERM reaches a replica while it stores HubSpot's answer (stopped right after
    HubSpot answered, SIGTERM queued, then resumed), with rotation on: the drain lets the
    store finish, the caller gets the new token, the process exits 0, and the new refresh
    token is stored and live at HubSpot."""
    result = Result("sigterm_during_store")
    c = open_cluster(env, sim, sim_url, replicas=1, **FAST_LEASE)
    portals = max(1, size.portals // 200)
    lost = exits = answered = 0
    try:
        for i in range(portals):
            hub = HUB_BASE + 980 + i
            _install_short(c, sim, hub, 120)
            [before] = c.sql("SELECT version FROM portals WHERE hub_id = $1", hub)
            holder = c.add_replica(crash_point="after_hubspot", pause=True)
            sim.configure(rotate_refresh_tokens=True)
            caller, got = _asking(c, holder, hub, 200)
            deadline = time.monotonic() + 15
            while not holder.stopped():
                if time.monotonic() > deadline:
                    raise RuntimeError("the holder never reached after_hubspot")
                time.sleep(0.05)
            os.kill(holder.process.pid, signal.SIGTERM)  # pending while it is stopped
            holder.resume()
            code = holder.process.wait(30)
            caller.join(30)
            c.replicas.remove(holder)
            sim.configure(rotate_refresh_tokens=False)
            exits += code == 0
            answered += sum(a.status == 200 for a in got)
            [row] = c.sql("SELECT version FROM portals WHERE hub_id = $1", hub)
            if row["version"] <= before["version"] or not _grant_kept(c, sim, hub):
                lost += 1
        result.figures.update(portals=portals, answered=answered, exit_0=exits, lost_tokens=lost)
        if lost:
            result.problems.append(f"{lost} answers HubSpot gave were not stored")
        if exits != portals:
            result.problems.append(f"{portals - exits} replicas did not exit 0")
        if answered != portals:
            result.problems.append(f"{portals - answered} callers got no token")
    finally:
        sim.configure(rotate_refresh_tokens=False)
        c.close()
    return result


def failing_among_healthy(env: Env, sim: Simulator, sim_url: str, size: Size) -> Result:
    """Portals failing for good (a refresh token that does not decrypt) among healthy ones,
    on 2 replicas with the proactive refresher, callers asking the healthy ones throughout:
    0 healthy answers below min_ttl (or degraded), every healthy portal refreshed ahead of
    time, and no failing portal attempted before its backoff ended (sampled every 0.5 s).
    Full size: 200 failing among 5,000 healthy."""
    result = Result("failing_among_healthy")
    failing_n, healthy_n = max(3, size.portals // 5), max(15, size.portals * 5)
    ttl = 120 if healthy_n > 100 else 20  # refreshed at 60-72 % of it
    window = ttl * 1.25
    refresher = {
        "BROKER_REFRESHER_ENABLED": "true",
        "BROKER_REFRESHER_INTERVAL": "0.5",
        "BROKER_REFRESH_RATE_PER_APP": "1000",
        "BROKER_REFRESH_RATE_MAX": "1000",
    }
    c = open_cluster(env, sim, sim_url, replicas=2, **refresher)
    hubs = [HUB_BASE + 10_000 + i for i in range(failing_n + healthy_n)]
    failing, healthy = hubs[:failing_n], hubs[failing_n:]
    stop = threading.Event()
    early: list[str] = []
    answers: list[Answer] = []
    try:
        sim.configure(access_token_ttl=ttl)
        c.install(hubs)
        # Each failing portal gets another portal's refresh token: it never decrypts.
        c.sql(
            "UPDATE portals SET refresh_ct = (SELECT refresh_ct FROM portals WHERE hub_id = $1),"
            " refresh_after = now() WHERE hub_id = ANY($2)",
            healthy[0],
            failing,
        )
        before = {r["hub_id"]: r["version"] for r in c.sql("SELECT hub_id, version FROM portals")}

        def sample() -> None:
            last: dict[int, tuple[int, object]] = {}
            while not stop.is_set():
                rows = c.sql(
                    "SELECT hub_id, failure_count, next_attempt_at, now() AS at FROM portals "
                    "WHERE hub_id = ANY($1)",
                    failing,
                )
                for r in rows:
                    previous = last.get(r["hub_id"])
                    if previous is not None and r["failure_count"] > previous[0]:
                        allowed = previous[1]
                        if r["failure_count"] > previous[0] + 1 or (
                            allowed is not None and allowed > r["at"]  # type: ignore[operator]
                        ):
                            early.append(f"hub {r['hub_id']} attempt {r['failure_count']}")
                    last[r["hub_id"]] = (r["failure_count"], r["next_attempt_at"])
                stop.wait(0.5)

        def ask() -> None:
            n = 0
            while not stop.is_set():
                hub = healthy[n % len(healthy)]
                n += 7
                answers.append(c.ask(c.replicas[n % 2], hub, min_ttl=ttl // 6))

        threads = [threading.Thread(target=sample)] + [
            threading.Thread(target=ask) for _ in range(min(size.callers, 10))
        ]
        for t in threads:
            t.start()
        time.sleep(window)
        stop.set()
        for t in threads:
            t.join(30)
        after = {
            r["hub_id"]: r for r in c.sql("SELECT hub_id, version, failure_count FROM portals")
        }
        stale = [h for h in healthy if after[h]["version"] <= before[h]]
        bad = [a for a in answers if a.status != 200 or a.body.get("degraded")]
        attempts = [after[h]["failure_count"] for h in failing]
        result.figures.update(
            failing=failing_n,
            healthy=healthy_n,
            window_s=window,
            asked=len(answers),
            healthy_bad_answers=len(bad),
            healthy_not_refreshed=len(stale),
            failing_attempts_max=max(attempts),
            failing_attempts_mean=round(sum(attempts) / len(attempts), 1),
            attempts_before_backoff_end=len(early),
        )
        if bad:
            shown = [(a.status, a.body.get("expires_in"), round(a.seconds, 1)) for a in bad[:3]]
            result.problems.append(
                f"{len(bad)} healthy answers failed or were degraded (status, expires_in, "
                f"seconds): {shown}"
            )
        if stale:
            result.problems.append(f"{len(stale)} healthy portals never refreshed")
        if early:
            result.problems.append(f"attempted before the backoff ended: {early[:3]}")
    finally:
        stop.set()
        sim.configure(access_token_ttl=1800)
        c.close()
    return result


def reinstall_quarantined(env: Env, sim: Simulator, sim_url: str, size: Size) -> Result:
    """An operator quarantines a portal; the app's install link (reusable for days) is opened
    for it again: it stays quarantined and no replica serves it. A revoked portal re-installed
    through the app's link stays revoked (install_portal_revoked), and HubSpot's new grant is
    given back."""
    result = Result("reinstall_quarantined")
    c = open_cluster(env, sim, sim_url, replicas=2)
    portals = max(1, size.portals // 50)
    served = kept = refused = 0
    try:
        hubs = [HUB_BASE + 1_000 + i for i in range(portals)]
        c.install(hubs)
        for hub in hubs:
            quarantined = httpx.post(
                f"{c.replicas[0].url}/v1/admin/portals/{hub}/quarantine",
                params={"app": c.app},
                json={"reason": "chaos drill"},
                headers={"Authorization": f"Bearer {c.key}"},
                timeout=30,
            )
            if quarantined.status_code != 200:
                result.problems.append(f"hub {hub}: quarantine answered {quarantined.status_code}")
            c.install([hub], via=c.replicas[1])  # the app-wide link, on the other replica
            [row] = c.sql("SELECT state FROM portals WHERE hub_id = $1", hub)
            kept += row["state"] == "quarantined"
            served += sum(c.ask(r, hub).status == 200 for r in c.replicas)
        revoked = hubs[0]
        httpx.post(
            f"{c.replicas[0].url}/v1/admin/portals/{revoked}/release",
            params={"app": c.app},
            headers={"Authorization": f"Bearer {c.key}"},
            timeout=30,
        )
        _revoke_on(c, c.replicas[0], revoked)
        calls = sim.counters().get("token.authorization_code", 0)
        try:
            c.install([revoked])
        except RuntimeError:
            refused = 1
        [row] = c.sql("SELECT state FROM portals WHERE hub_id = $1", revoked)
        if row["state"] != "revoked" or not refused:
            result.problems.append(f"revoked portal re-installed: {row['state']}")
        served += sum(c.ask(r, revoked).status == 200 for r in c.replicas)
        result.figures.update(
            portals=portals,
            kept_quarantined=kept,
            served=served,
            revoked_reinstall_refused=refused,
            codes_exchanged=sim.counters().get("token.authorization_code", 0) - calls,
        )
        if kept != portals:
            result.problems.append(f"{portals - kept} re-installs lifted a quarantine")
        if served:
            result.problems.append(f"{served} answers served a quarantined or revoked portal")
    finally:
        c.close()
    return result


def _checked(scenario: Scenario) -> Scenario:
    """Adds what the scenario's callers were given, checked at the simulator (see
    ``Cluster.check``): a figure, and a problem for each token HubSpot contradicts."""

    def run(env: Env, sim: Simulator, sim_url: str, size: Size) -> Result:
        first = len(OPENED)
        result = scenario(env, sim, sim_url, size)
        clusters = OPENED[first:]
        wrong = [v for c in clusters for v in c.violations]
        result.figures["checked_at_hubspot"] = sum(c.checked for c in clusters)
        if wrong:
            result.problems.append(f"{len(wrong)} tokens contradicted by HubSpot: {wrong[:3]}")
        return result

    return run


def gateway_budget(env: Env, sim: Simulator, sim_url: str, size: Size) -> Result:
    """Three services hammering one portal through the gateway (:mod:`.gateway_budget`)."""
    result = Result("gateway_budget")
    gateway_budget_run(env, sim, sim_url, size.seconds, result)
    return result


SCENARIOS: dict[str, Scenario] = {
    "audit_loss": audit_loss,
    "revoke": _revoke("pass", 1.0),
    "revoke_redis_down": _revoke("down", 10.0),
    "invalid_grant": _dead_grant("pass", 1.0),
    "invalid_grant_redis_down": _dead_grant("down", 10.0),
    "hubspot_outage": hubspot_outage,
    "herd": herd,
    "redis_down": _redis_fault("down"),
    "redis_blackhole": _redis_fault("blackhole"),
    "redis_flushall": flushall_mid_lock,
    "paused_holder": paused_holder,
    "fenced_holder": fenced_holder,
    "slow_hubspot_batch": slow_hubspot_batch,
    "crash_points": crash_points,
    "revoke_during_slow_refresh": revoke_during_slow_refresh,
    "postgres_blackhole_after_hubspot": postgres_blackhole_after_hubspot,
    "sigterm_during_store": sigterm_during_store,
    "failing_among_healthy": failing_among_healthy,
    "reinstall_quarantined": reinstall_quarantined,
    "gateway_budget": gateway_budget,
}
SCENARIOS = {name: _checked(scenario) for name, scenario in SCENARIOS.items()}
