"""A Hypothesis state machine driving the real :class:`RefreshEngine` of three replicas whose
steps interleave freely, with refresh-token rotation switched on and off along the way.

Each replica is the engine as production builds it (its own PostgreSQL pool, real Vault,
Redis and the simulator over HTTP); the machine injects only what a test must own: the
engine's clock and sleeps, and its checkpoints (``after_claim``, ``after_hubspot``,
``after_journal``), where a replica waits until the machine lets it go on, or crashes
(its pool is terminated first, so it writes nothing more, as with kill -9). Other rules:
time passes (every lease runs out; timestamps move back), a day passes and the retention
sweep runs, the healing sweep runs, an operator re-installs, revokes, quarantines and lifts
the quarantine.

Invariants after every step:
* versions only grow;
* never two upstream calls that HubSpot answered with a token from one version, unless the
  answer of the first was lost (a crash) or left unjournaled past its window;
* ``needs_reauth`` only when an answer was lost, or while a live one is on its way (held
  by a replica past its window, or journaled and not yet applied); after a healing sweep,
  no ``needs_reauth`` portal holds an unapplied journal row whose refresh token is live;
* nothing is served once a revoke or quarantine returned (until it is undone);
* every served token's expiry is never later than HubSpot's;
* unless an answer was lost, the stored refresh token (or a newer journaled one) is live.

``BROKER_STATEFUL_EXAMPLES`` sets the number of examples (``make test``: 60; the issue's
long run: 2,000).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from broker.adapters.hubspot import HubSpotOAuth
from broker.adapters.postgres.audit import PostgresAudit
from broker.adapters.postgres.pool import Database
from broker.adapters.postgres.portals import PostgresPortals
from broker.adapters.postgres.retention import PostgresRetention
from broker.adapters.redis import RedisCoordinator
from broker.adapters.vault import VaultAdapter
from broker.config import Secret, Settings, load_settings
from broker.core.apps import AppCatalog
from broker.core.models import App, PortalKey, PortalRecord, PortalState, TokenGrant
from broker.core.ports import EncryptedGrant
from broker.core.refresh import RefreshEngine
from broker.core.refresh_policy import JOURNAL_GRACE_LEASES, Fresh, schedule
from broker.core.retention import RetentionPolicy, RetentionSweeper
from broker.dev.simulator import Simulator

HUB = 5_000_001
LEASE = 30.0
#: Where a replica can be stopped; "end": run its refresh to the end.
CHECKPOINTS = ("after_claim", "after_hubspot", "after_journal", "end")


class Crashed(BaseException):
    """kill -9 at a checkpoint: nothing after it runs (not even ``except Exception``)."""


@dataclass
class Replica:
    index: int
    db: Database
    engine: RefreshEngine
    task: asyncio.Task[Fresh] | None = None
    #: The checkpoint it waits at, and the events that park and release it there.
    at: str | None = None
    reached: asyncio.Event = field(default_factory=asyncio.Event)
    go: asyncio.Event = field(default_factory=asyncio.Event)
    crashing: bool = False
    version: int = 0  # of the lease in flight
    #: The machine's clock when HubSpot's answer reached this replica (not yet journaled).
    answered_at: float | None = None
    answered_rotated: bool = False
    started_step: int = 0
    started_now: float = 0.0
    #: What its refresh ended with, for the machine to check outside the event loop.
    outcome: asyncio.Task[Fresh] | None = None


class CountingOAuth:
    """The real HubSpot client; counts calls answered with a token, by the version they
    were sent from (the replica's lease)."""

    def __init__(self, real: HubSpotOAuth, machine: Protocol, index: int) -> None:
        self._real = real
        self._machine = machine
        self._index = index

    async def refresh(self, app: App, client_secrets: list[Secret], token: str) -> TokenGrant:
        grant = await self._real.refresh(app, client_secrets, token)
        replica = self._machine.replicas[self._index]
        self._machine.answered[replica.version] += 1
        replica.answered_at = self._machine.now
        replica.answered_rotated = bool(self._machine.sim.settings.rotate_refresh_tokens)
        return grant

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


class Protocol(RuleBasedStateMachine):
    env: dict[str, str]
    sim: Simulator

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.settings: Settings = load_settings(self.env)
        # How long an unanswered call blocks others (RefreshEngine._answer_window).
        self.window = (1 + JOURNAL_GRACE_LEASES) * LEASE + self.settings.refresh_budget_seconds
        self.now = 0.0  # seconds the machine made pass, on top of the real clock
        self.step = 0
        self.answered: Counter[int] = Counter()
        self.excused: set[int] = set()  # versions whose answer was lost or left too long
        self.lost_live_token = False
        self.last_version = 0
        #: Step at which the portal last stopped serving (revoke, quarantine); None: serving.
        self.stopped_at: int | None = None
        self.replicas: list[Replica] = []
        self.run(self._setup())

    def run(self, coro):  # type: ignore[no-untyped-def]
        return self.loop.run_until_complete(coro)

    def clock(self) -> float:
        return time.monotonic() + self.now

    async def _sleep(self, seconds: float) -> None:
        self.now += seconds  # the engine's own waits (grace, journal retries) take no time
        await asyncio.sleep(0)

    async def _connect(self) -> Database:
        return await Database.connect(
            self.settings.database_url.get(), min_size=1, max_size=4, timeout=5
        )

    async def _setup(self) -> None:
        s = self.settings
        self.db = await self._connect()
        self.portals = PostgresPortals(self.db)
        self.audit = PostgresAudit(self.db)
        self.vault = VaultAdapter(s)
        await self.vault.login()
        self.coordinator = RedisCoordinator(s)
        self.oauth = HubSpotOAuth(s)
        self.client_id = f"sm-{secrets.token_hex(4)}"
        self.secret = secrets.token_hex(12)
        redirect = "https://broker.test/oauth/callback"
        self.sim.add_app(self.client_id, [self.secret], [redirect])
        # A portal and an app of their own per example, so a failing case replays the same.
        hub = HUB + secrets.randbelow(10**6)
        self.sim.add_portal(hub)
        self.sim.configure(rotate_refresh_tokens=False)
        self.app = App(f"sm-{secrets.token_hex(3)}", self.client_id, redirect)
        await self.portals.save_app(self.app)
        await self.vault.add_client_secret(self.app.slug, Secret(self.secret))
        self.key = PortalKey(self.app.slug, hub)
        await self._install()
        self.replicas = [await self._replica(i) for i in range(3)]

    async def _replica(self, index: int) -> Replica:
        db = await self._connect()
        replica = Replica(index, db, engine=None)  # type: ignore[arg-type]

        async def checkpoint(name: str) -> None:
            if name == "after_journal":
                replica.answered_at = None  # the answer is safe in the journal
            replica.at = name
            replica.reached.set()
            await replica.go.wait()
            replica.go.clear()
            replica.at = None
            if replica.crashing:
                raise Crashed(name)

        portals = PostgresPortals(db)
        replica.engine = RefreshEngine(
            self.settings,
            portals=portals,
            leases=portals,
            apps=AppCatalog(portals),
            coordinator=self.coordinator,
            cipher=self.vault,
            secrets_store=self.vault,
            oauth=CountingOAuth(self.oauth, self, index),  # type: ignore[arg-type]
            limiter=self.coordinator,
            audit=self.audit,
            replica_id=f"replica-{index}-{secrets.token_hex(3)}",
            checkpoint=checkpoint,
            clock=self.clock,
            sleep=self._sleep,
        )
        return replica

    async def _install(self) -> PortalRecord:
        code = self.sim.issue_code(self.client_id, self.app.redirect_uri, self.key.hub_id)
        grant = await self.oauth.exchange_code(
            self.app, Secret(self.secret), code=code, code_verifier=None
        )
        refresh_ct, access_ct = await self.vault.encrypt(
            [
                (grant.refresh_token, self.key.context("refresh")),
                (grant.access_token, self.key.context("access")),
            ]
        )
        now = await self.portals.db_now()
        encrypted = EncryptedGrant(refresh_ct, access_ct, *schedule(now, grant.expires_in))
        return await self.portals.install(
            self.key, encrypted, hub_domain=None, scopes=(), actor="test"
        )

    def teardown(self) -> None:
        async def close() -> None:
            for r in self.replicas:
                if r.task is not None and not r.task.done():
                    r.crashing = True
                    r.go.set()
                    with contextlib.suppress(BaseException):
                        await asyncio.wait_for(r.task, 10)
                r.db._pool.terminate()
            await self.audit.close()
            await self.coordinator.close()
            await self.oauth.close()
            await self.vault.close()
            self.db._pool.terminate()  # a graceful close may wait on a busy machine

        self.run(close())
        self.loop.close()

    def _record(self) -> PortalRecord:
        record = self.run(self.portals.get_portal(self.key))
        assert record is not None
        return record

    async def _until_parked(self, r: Replica) -> None:
        """Run until the replica waits at a checkpoint or its refresh is over."""
        assert r.task is not None
        reached = asyncio.ensure_future(r.reached.wait())
        await asyncio.wait({r.task, reached}, return_when=asyncio.FIRST_COMPLETED)
        reached.cancel()
        r.reached.clear()
        if r.task.done():
            r.outcome, r.task = r.task, None

    def _settle(self, r: Replica) -> None:
        """After a replica ran: check what its finished refresh served."""
        task, r.outcome = r.outcome, None
        if task is None:
            return
        if r.answered_at is not None:
            # HubSpot's answer never reached the journal (a crash, or the store gave up).
            self.excused.add(r.version)
            self.lost_live_token |= r.answered_rotated
            r.answered_at = None
        if task.exception() is None:
            self._check_served(task.result(), r)

    def _check_served(self, fresh: Fresh, r: Replica) -> None:
        record = fresh.record
        if not record.state.serves_tokens:
            return  # the token service raises the state's error: nothing is served
        # Nothing served once a revoke or quarantine returned, until it was undone.
        assert self.stopped_at is None or self.stopped_at < r.started_step, (
            f"served a token of a portal stopped at step {self.stopped_at}"
        )
        token = fresh.access_token
        if token is None:
            assert record.access_ct is not None
            context = self.key.context("access")
            (token,) = self.run(self.vault.decrypt([(record.access_ct, context)]))
        info = self.sim.access_token_info(token)
        assert info is not None, "served an access token HubSpot does not know"
        # The expiry we report is never later than HubSpot's: 2 s for the round trips, plus
        # the time the machine made pass during this refresh (HubSpot's clock is real).
        slack = 2 + self.now - r.started_now
        assert record.remaining() <= info.expires_in + slack, (record.remaining(), info)

    # --- the replicas' steps --------------------------------------------------------------
    @rule(index=st.integers(0, 2), until=st.sampled_from(CHECKPOINTS))
    def replica_runs(self, index: int, until: str) -> None:
        """Replica ``index`` runs until it waits at checkpoint ``until`` or its refresh is
        over; an idle one first claims the lease (ignoring any backoff, like an impatient
        caller) and starts the engine's refresh with it."""
        r = self.replicas[index]
        if r.at is None:
            record = self._record()
            lease = self.run(
                r.engine._portals.claim_lease(  # the replica's own adapter
                    record.id,
                    f"{r.engine._replica}:{secrets.token_hex(4)}",
                    lease_seconds=LEASE,
                    min_ttl=10**9,
                    ignore_backoff=True,
                )
            )
            if lease is None:
                return
            lease = replace(lease, granted_at=self.clock())
            r.version, r.started_step, r.started_now = lease.version, self.step, self.now
            r.task = self.loop.create_task(r.engine.refresh_with_lease(self.key, lease))
            self.run(self._until_parked(r))
        while r.at is not None and r.at != until:
            r.go.set()
            self.run(self._until_parked(r))
        if r.at is None:
            self._settle(r)

    # Replicas run more often than the world changes: the interleavings are the point.
    another_replica_runs = replica_runs

    @precondition(lambda self: any(r.at for r in self.replicas))
    @rule(index=st.integers(0, 2))
    def crash(self, index: int) -> None:
        """kill -9 of a replica waiting at a checkpoint: its pool is cut first, so nothing
        it does afterwards reaches Postgres; a new process takes its place."""
        r = next(r for r in self.replicas[index:] + self.replicas if r.at is not None)

        async def kill() -> None:
            r.db._pool.terminate()  # the process is gone
            r.crashing = True
            r.go.set()
            await self._until_parked(r)
            self.replicas[r.index] = await self._replica(r.index)

        self.run(kill())
        self._settle(r)

    # --- the world ------------------------------------------------------------------------
    async def _pass_time(self, seconds: float) -> None:
        self.now += seconds
        for r in self.replicas:
            if r.answered_at is not None and self.now - r.answered_at >= self.window:
                self.excused.add(r.version)  # its answer may now be raced by a new call
        shift = timedelta(seconds=seconds)
        await self.db.execute(
            """UPDATE portals SET lease_until = lease_until - $1::interval,
                                  next_attempt_at = next_attempt_at - $1::interval""",
            shift,
        )
        await self.db.execute(
            "UPDATE token_journal SET created_at = created_at - $1::interval", shift
        )
        await self.db.execute("UPDATE refresh_intents SET sent_at = sent_at - $1::interval", shift)

    @rule(day=st.booleans())
    def time_passes(self, day: bool) -> None:
        """A lease's worth of time passes (or every holder is paused that long); or a day,
        and the retention sweep runs."""
        if not day:
            self.run(self._pass_time(LEASE + 1))
            return

        async def sweep() -> None:
            await self._pass_time(25 * 3600)
            policy = RetentionPolicy(audit_days=0, events_days=0, journal_hours=24)
            await RetentionSweeper(policy, store=PostgresRetention(self.db)).sweep()

        self.run(sweep())

    @rule()
    def healing_sweep(self) -> None:
        self.run(self.replicas[0].engine.heal_from_journal())
        self._no_live_grant_left_behind()

    @rule(action=st.sampled_from(["reinstall", "revoke", "quarantine", "lift_quarantine"]))
    def operator(self, action: str) -> None:
        """Re-install (a portal-bound link: a revoked portal connects again), revoke,
        quarantine, lift the quarantine."""
        serving = (PortalState.ACTIVE, PortalState.REFRESH_FAILING, PortalState.NEEDS_REAUTH)
        if action == "reinstall":
            record = self.run(self._install())
            if record.state is not PortalState.QUARANTINED:
                self.stopped_at = None
            # The new grant replaces every older one: older answers no longer matter.
            self.lost_live_token = False
        elif action == "revoke":
            self.run(self.portals.revoke(self.key, reason="test", actor="test"))
            self.stopped_at = self.step
        elif action == "quarantine":
            done = self.run(
                self.portals.set_state(self.key, PortalState.QUARANTINED, allowed_from=serving)
            )
            if done is not None:
                self.stopped_at = self.step
        else:
            lifted = self.run(
                self.portals.set_state(
                    self.key, PortalState.ACTIVE, allowed_from=(PortalState.QUARANTINED,)
                )
            )
            if lifted is not None:
                self.stopped_at = None

    @initialize(on=st.booleans())
    def rotation_at_start(self, on: bool) -> None:
        self.sim.configure(rotate_refresh_tokens=on)

    @rule(on=st.booleans())
    def rotation(self, on: bool) -> None:
        self.sim.configure(rotate_refresh_tokens=on)

    # --- invariants -----------------------------------------------------------------------
    @invariant()
    def count_the_step(self) -> None:
        self.step += 1

    @invariant()
    def versions_only_grow(self) -> None:
        version = self._record().version
        assert version >= self.last_version
        self.last_version = version

    @invariant()
    def one_upstream_answer_per_version(self) -> None:
        twice = {v for v, n in self.answered.items() if n > 1} - self.excused
        assert not twice, f"two answered upstream calls from version(s) {sorted(twice)}"

    @invariant()
    def needs_reauth_only_when_an_answer_was_lost(self) -> None:
        """Or while a live answer is still on its way: held unjournaled by a replica past
        its window (it heals the portal when it lands), or journaled and not yet applied
        (its holder, or the healing sweep, applies it)."""
        record = self._record()
        if record.state is not PortalState.NEEDS_REAUTH:
            return
        held = any(r.answered_at is not None for r in self.replicas)
        journaled = any(
            self.sim.is_refresh_token_valid(t) for t in self._journaled_refresh_tokens(record)
        )
        assert self.lost_live_token or held or journaled, "needs_reauth without a lost token"

    def _no_live_grant_left_behind(self) -> None:
        """After a healing sweep, no needs_reauth portal holds a live journaled grant."""
        record = self._record()
        if record.state is not PortalState.NEEDS_REAUTH:
            return
        for token in self._journaled_refresh_tokens(record):
            assert not self.sim.is_refresh_token_valid(token), (
                "needs_reauth while the journal holds a live grant"
            )

    def _journaled_refresh_tokens(self, record: PortalRecord) -> list[str]:
        rows = self.run(
            self.db.fetch(
                "SELECT refresh_ct FROM token_journal WHERE portal_id = $1 "
                "AND applied_at IS NULL AND base_version >= $2",
                record.id,
                record.version,
            )
        )
        return [
            self.run(self.vault.decrypt([(row["refresh_ct"], self.key.context("refresh"))]))[0]
            for row in rows
        ]

    @invariant()
    def a_live_token_is_kept(self) -> None:
        # Answers held only in a replica's memory are in flight; journaled ones count.
        if self.lost_live_token or any(r.answered_at is not None for r in self.replicas):
            return
        record = self._record()
        if not record.state.serves_tokens or record.refresh_ct is None:
            return
        (stored,) = self.run(self.vault.decrypt([(record.refresh_ct, self.key.context("refresh"))]))
        candidates = [stored, *self._journaled_refresh_tokens(record)]
        assert any(self.sim.is_refresh_token_valid(t) for t in candidates)


EXAMPLES = int(os.environ.get("BROKER_STATEFUL_EXAMPLES", "60"))


@pytest.mark.timeout(120 + 3 * EXAMPLES)
def test_refresh_protocol_state_machine(env: dict[str, str], sim: Simulator) -> None:
    Protocol.env = {**env, "BROKER_HUBSPOT_TIMEOUT": "5", "BROKER_LEASE_SECONDS": str(LEASE)}
    Protocol.sim = sim
    run_state_machine_as_test(
        Protocol,
        settings=settings(
            max_examples=EXAMPLES,
            stateful_step_count=40,
            deadline=None,
            derandomize=True,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
        ),
    )


INVARIANTS = (
    Protocol.count_the_step,
    Protocol.versions_only_grow,
    Protocol.one_upstream_answer_per_version,
    Protocol.needs_reauth_only_when_an_answer_was_lost,
    Protocol.a_live_token_is_kept,
)


def _run(replica: int, until: str) -> Callable[[Protocol], None]:
    return lambda m: m.replica_runs(replica, until)


def _time(m: Protocol) -> None:
    m.time_passes(day=False)


def _rotation(on: bool) -> Callable[[Protocol], None]:
    return lambda m: m.rotation(on)


def _operator(action: str) -> Callable[[Protocol], None]:
    return lambda m: m.operator(action)


def _heal(m: Protocol) -> None:
    m.healing_sweep()


#: A holds HubSpot's (rotating) answer past its window; B then meets invalid_grant.
_PAST_THE_WINDOW = [_rotation(True), _run(0, "after_hubspot"), *[_time] * 4, _run(1, "end")]

#: The adversarial interleavings of the protocol, each a script through the same machine
#: and invariants (random search reaches them rarely: each needs one exact order).
SCRIPTS: dict[str, list[Callable[[Protocol], None]]] = {
    # A's lease runs out while it holds HubSpot's answer: B must not call from that version.
    "answer_held_past_the_lease": [
        _rotation(False),
        _run(0, "after_hubspot"),
        _time,
        _run(1, "end"),
        _run(0, "end"),
    ],
    # The same with rotation: B waits on A's unanswered call, A's answer is applied late.
    "answer_held_past_the_lease_rotating": [
        _rotation(True),
        _run(0, "after_hubspot"),
        _time,
        _run(1, "end"),
        _run(0, "end"),
    ],
    # Held past the window: B meets invalid_grant and marks needs_reauth; A heals it.
    "answer_held_past_its_window": [*_PAST_THE_WINDOW, _run(0, "end")],
    # ... and if A dies after journaling, the healing sweep applies its answer.
    "journaled_then_crashed_after_needs_reauth": [
        *_PAST_THE_WINDOW,
        _run(0, "after_journal"),
        lambda m: m.crash(0),
        _heal,
    ],
    # A stolen lease adopts the journaled answer instead of calling again.
    "stolen_lease_adopts_the_journal": [
        _rotation(False),
        _run(0, "after_journal"),
        _time,
        _run(1, "end"),
        _run(0, "end"),
    ],
    # A journaled answer whose commit never happened (the holder died after journaling, its
    # lease released as after a failed commit): the next holder adopts it, calls nobody.
    "journaled_then_released_unapplied": [
        _rotation(False),
        _run(0, "after_journal"),
        lambda m: m.crash(0),
        lambda m: m.run(m.db.execute("UPDATE portals SET lease_owner = NULL, lease_until = NULL")),
        _run(1, "end"),
    ],
    # B took A's lapsed lease before A journaled: B adopts A's answer rather than calling.
    "lease_taken_before_the_journal": [
        _rotation(False),
        _run(0, "after_hubspot"),
        _time,
        _run(1, "after_claim"),
        _run(0, "end"),
        _run(1, "end"),
    ],
    # A fenced-out holder never overwrites a newer token with its older one.
    "fenced_out_after_two_refreshes": [
        _rotation(True),
        _run(0, "after_journal"),
        _time,
        _run(1, "end"),
        _run(1, "end"),
        _run(0, "end"),
    ],
    # Nothing is served once a quarantine or revoke returned.
    "quarantine_during_a_refresh": [
        _run(0, "after_hubspot"),
        _operator("quarantine"),
        _run(0, "end"),
    ],
    # ... also when the holder's lease ran out first (its answer must not be applied late).
    "quarantine_during_a_stalled_refresh": [
        _run(0, "after_hubspot"),
        _time,
        _operator("quarantine"),
        _run(0, "end"),
    ],
    "revoke_during_a_refresh": [_run(0, "after_hubspot"), _operator("revoke"), _run(0, "end")],
    "reinstall_during_a_refresh": [
        _rotation(True),
        _run(0, "after_hubspot"),
        _operator("reinstall"),
        _run(0, "end"),
        _run(1, "end"),
    ],
}


@pytest.mark.parametrize("name", list(SCRIPTS))
def test_adversarial_interleaving(name: str, env: dict[str, str], sim: Simulator) -> None:
    Protocol.env = {**env, "BROKER_HUBSPOT_TIMEOUT": "5", "BROKER_LEASE_SECONDS": str(LEASE)}
    Protocol.sim = sim
    machine = Protocol()
    try:
        for step in SCRIPTS[name]:
            step(machine)
            for check in INVARIANTS:
                check(machine)
    finally:
        machine.teardown()
