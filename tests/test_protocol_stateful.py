"""A Hypothesis state machine over the refresh protocol's storage steps, with three replicas
whose steps interleave freely: claim a lease, call HubSpot, journal, commit (fenced), lose
a lease to time (a pause), crash, adopt the journal, and meet ``invalid_grant`` — with
refresh-token rotation switched on and off along the way. Real Postgres, Vault and the
simulator over HTTP; the replicas are the real adapters and the engine's own adoption and
healing steps.

Invariants after every step:
* versions only grow;
* the portal never ends up ``needs_reauth`` unless a replica crashed holding the only live
  token (the documented residual risk: kill -9 between HubSpot's answer and the journal);
* once nothing is in flight, the stored refresh token — or a newer journaled one the next
  lease adopts — is live at HubSpot.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta

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
from broker.adapters.postgres.pool import Database
from broker.adapters.postgres.portals import PostgresPortals
from broker.adapters.vault import VaultAdapter
from broker.config import Secret, Settings, load_settings
from broker.core.models import App, Lease, PortalKey, PortalState, TokenGrant
from broker.core.ports import EncryptedGrant
from broker.core.refresh import schedule
from broker.dev.simulator import Simulator
from broker.errors import GrantDead

HUB = 5_000_001


@dataclass
class Replica:
    lease: Lease | None = None
    grant: TokenGrant | None = None
    dead_grant: bool = False
    journal_id: int | None = None
    encrypted: EncryptedGrant | None = None
    owner: str = field(default_factory=lambda: f"replica-{secrets.token_hex(3)}")


class Protocol(RuleBasedStateMachine):
    env: dict[str, str]
    sim: Simulator

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.settings: Settings = load_settings(self.env)
        self.run(self._setup())
        self.replicas = [Replica() for _ in range(3)]
        self.versions = [1]
        self.lost_live_token = False  # a crash between HubSpot's answer and the journal

    def run(self, coro):  # type: ignore[no-untyped-def]
        return self.loop.run_until_complete(coro)

    async def _setup(self) -> None:
        s = self.settings
        self.db = await Database.connect(s.database_url.get(), min_size=1, max_size=4, timeout=5)
        self.portals = PostgresPortals(self.db)
        self.vault = VaultAdapter(s)
        await self.vault.login()
        self.oauth = HubSpotOAuth(s)
        self.client_id = f"sm-{secrets.token_hex(4)}"
        self.secret = secrets.token_hex(12)
        redirect = "https://broker.test/oauth/callback"
        self.sim.add_app(self.client_id, [self.secret], [redirect])
        # A portal of its own per example, so a failing case replays the same way.
        hub = HUB + secrets.randbelow(10**6)
        self.sim.add_portal(hub)
        self.sim.configure(rotate_refresh_tokens=False)
        self.app = App("sm", self.client_id, redirect)
        await self.portals.save_app(self.app)
        self.key = PortalKey("sm", hub)
        code = self.sim.issue_code(self.client_id, redirect, hub)
        grant = await self.oauth.exchange_code(
            self.app, Secret(self.secret), code=code, code_verifier=None
        )
        await self.portals.install(
            self.key, await self._encrypt(grant), hub_domain=None, scopes=(), actor="test"
        )

    async def _encrypt(self, grant: TokenGrant) -> EncryptedGrant:
        refresh_ct, access_ct = await self.vault.encrypt(
            [
                (grant.refresh_token, self.key.context("refresh")),
                (grant.access_token, self.key.context("access")),
            ]
        )
        now = await self.portals.db_now()
        return EncryptedGrant(refresh_ct, access_ct, *schedule(now, grant.expires_in))

    def teardown(self) -> None:
        async def close() -> None:
            await self.oauth.close()
            await self.vault.close()
            await self.db.close()

        self.run(close())
        self.loop.close()

    def _pick(self, data: st.DataObject, ok: Callable[[Replica], bool]) -> int:
        return data.draw(st.sampled_from([i for i, r in enumerate(self.replicas) if ok(r)]))

    # --- steps ----------------------------------------------------------------------------
    @precondition(lambda self: any(r.lease is None for r in self.replicas))
    @rule(data=st.data())
    def start_refresh(self, data: st.DataObject) -> None:
        """Claim the lease (adopting a journaled response first when it was stolen), then
        call HubSpot with the stored refresh token."""
        i = self._pick(data, lambda r: r.lease is None)
        r = self.replicas[i]
        record = self.run(self.portals.get_portal(self.key))
        assert record is not None
        r.lease = self.run(
            self.portals.claim_lease(
                record.id, r.owner, lease_seconds=30, min_ttl=10**9, ignore_backoff=True
            )
        )
        if r.lease is None:
            return
        if r.lease.stolen and self._adopt(i):
            return
        (token,) = self.run(self.vault.decrypt([(r.lease.refresh_ct, self.key.context("refresh"))]))
        try:
            r.grant = self.run(self.oauth.refresh(self.app, [Secret(self.secret)], token))
        except GrantDead:
            r.dead_grant = True

    def _adopt(self, i: int) -> bool:
        """The engine's first step on a stolen lease: adopt a journaled newer response."""
        r = self.replicas[i]
        assert r.lease is not None
        newer = self.run(self.portals.newer_journal_entry(r.lease))
        if newer is None:
            return False
        committed = self.run(self.portals.commit_refresh(r.lease, newer[1], newer[0]))
        if committed is not None:
            self.versions.append(committed.version)
        self.replicas[i] = Replica(owner=r.owner)
        return True

    @precondition(lambda self: any(_can_journal(r) for r in self.replicas))
    @rule(data=st.data())
    def journal(self, data: st.DataObject) -> None:
        i = self._pick(data, _can_journal)
        r = self.replicas[i]
        assert r.lease is not None
        assert r.grant is not None
        r.encrypted = self.run(self._encrypt(r.grant))
        r.journal_id = self.run(self.portals.journal(r.lease, r.encrypted))

    @precondition(lambda self: any(_can_commit(r) for r in self.replicas))
    @rule(data=st.data())
    def commit(self, data: st.DataObject) -> None:
        i = self._pick(data, _can_commit)
        r = self.replicas[i]
        assert r.lease is not None
        assert r.journal_id is not None
        assert r.encrypted is not None
        committed = self.run(self.portals.commit_refresh(r.lease, r.encrypted, r.journal_id))
        if committed is None:  # fenced out: the engine heals a false needs_reauth
            healed = self.run(self.portals.heal(r.lease, r.encrypted, r.journal_id))
            if healed is not None:
                committed = healed
        if committed is not None:
            self.versions.append(committed.version)
        self.replicas[i] = Replica(owner=r.owner)

    @precondition(lambda self: any(r.lease and r.dead_grant for r in self.replicas))
    @rule(data=st.data())
    def handle_dead_grant(self, data: st.DataObject) -> None:
        """The engine's invalid_grant path without its grace sleep: adopt, or accept that
        the version moved on, or (nothing else in flight anywhere) mark needs_reauth."""
        i = self._pick(data, lambda r: bool(r.lease and r.dead_grant))
        r = self.replicas[i]
        assert r.lease is not None
        newer = self.run(self.portals.newer_journal_entry(r.lease))
        if newer is not None:
            committed = self.run(self.portals.commit_refresh(r.lease, newer[1], newer[0]))
            if committed is not None:
                self.versions.append(committed.version)
                self.replicas[i] = Replica(owner=r.owner)
                return
        current = self.run(self.portals.get_portal(self.key))
        assert current is not None
        others_in_flight = any(o.grant for j, o in enumerate(self.replicas) if j != i)
        if current.version == r.lease.version and not others_in_flight:
            self.run(
                self.portals.record_failure(
                    r.lease,
                    failure_class="grant_dead",
                    state=PortalState.NEEDS_REAUTH,
                    retry_in=0,
                )
            )
        self.replicas[i] = Replica(owner=r.owner)

    @rule()
    def leases_run_out(self) -> None:
        """Time passes (or holders are paused) past every lease."""
        self.run(
            self.db.execute(
                "UPDATE portals SET lease_until = clock_timestamp() - $1::interval",
                timedelta(seconds=1),
            )
        )

    @precondition(lambda self: any(r.lease for r in self.replicas))
    @rule(data=st.data(), after_hubspot=st.booleans())
    def crash(self, data: st.DataObject, after_hubspot: bool) -> None:
        i = self._pick(data, lambda r: r.lease is not None)
        r = self.replicas[i]
        if r.grant is not None and r.journal_id is None:
            if not after_hubspot:
                return  # only a crash in that exact window loses anything
            rotated = self.sim.settings.rotate_refresh_tokens
            self.lost_live_token |= rotated
        self.replicas[i] = Replica()

    @initialize(on=st.booleans())
    def rotation_at_start(self, on: bool) -> None:
        self.sim.configure(rotate_refresh_tokens=on)

    @rule(on=st.booleans())
    def rotation(self, on: bool) -> None:
        self.sim.configure(rotate_refresh_tokens=on)

    # --- invariants -----------------------------------------------------------------------
    @invariant()
    def versions_only_grow(self) -> None:
        assert self.versions == sorted(self.versions)
        assert len(set(self.versions)) == len(self.versions)

    @invariant()
    def no_false_needs_reauth(self) -> None:
        record = self.run(self.portals.get_portal(self.key))
        assert record is not None
        if record.state is PortalState.NEEDS_REAUTH:
            assert self.lost_live_token, "needs_reauth without a lost live token"

    @invariant()
    def a_live_token_is_kept(self) -> None:
        # Responses held only in a replica's memory are in flight; journaled ones count.
        if self.lost_live_token or any(r.grant and r.journal_id is None for r in self.replicas):
            return
        record = self.run(self.portals.get_portal(self.key))
        assert record is not None
        assert record.refresh_ct is not None
        candidates = [record.refresh_ct]
        rows = self.run(
            self.db.fetch(
                "SELECT refresh_ct FROM token_journal WHERE portal_id = $1 "
                "AND applied_at IS NULL AND base_version >= $2",
                record.id,
                record.version,
            )
        )
        candidates += [row["refresh_ct"] for row in rows]
        plain = [
            self.run(self.vault.decrypt([(ct, self.key.context("refresh"))]))[0]
            for ct in candidates
        ]
        assert any(self.sim.is_refresh_token_valid(t) for t in plain)


def _can_journal(r: Replica) -> bool:
    return r.lease is not None and r.grant is not None and r.journal_id is None


def _can_commit(r: Replica) -> bool:
    return r.lease is not None and r.journal_id is not None


def test_refresh_protocol_state_machine(env: dict[str, str], sim: Simulator) -> None:
    Protocol.env = {**env, "BROKER_HUBSPOT_TIMEOUT": "5"}
    Protocol.sim = sim
    run_state_machine_as_test(
        Protocol,
        settings=settings(
            max_examples=60,
            stateful_step_count=20,
            deadline=None,
            derandomize=True,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
        ),
    )
