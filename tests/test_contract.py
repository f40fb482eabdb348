"""``openapi.yaml`` is the contract: every route is documented, every documented path
exists, every documented status of the token endpoint is produced, and schemathesis finds
no 5xx and no response that breaks the schema."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
import schemathesis
import yaml
from hypothesis import HealthCheck, Phase
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from hypothesis.errors import Flaky
from schemathesis.checks import CheckFunction
from schemathesis.config import PositiveDataAcceptanceConfig
from schemathesis.core.failures import FailureGroup, ServerError
from schemathesis.core.result import Ok
from schemathesis.core.transforms import UNRESOLVABLE
from schemathesis.core.transport import Response
from schemathesis.engine.errors import is_inconsistent_replay
from schemathesis.generation import GenerationMode
from schemathesis.generation.stateful.state_machine import (
    StepInput,
    StepOutput,
    Transition,
    normalize_name,
)
from schemathesis.openapi.checks import (
    IgnoredAuth,
    JsonSchemaError,
    UndefinedContentType,
    UndefinedStatusCode,
)
from schemathesis.specs.openapi.checks import positive_data_acceptance
from schemathesis.specs.openapi.expressions import MultiMatch
from starlette.applications import Starlette
from starlette.routing import Route

from broker.app import create_app, open_admin
from broker.config import Settings
from broker.core.models import Role
from broker.web import api as token_route
from broker.web import gateway
from tests.helpers import FUZZ_COUNTS, Deploy, Deployment, sql

SPEC_PATH = Path(__file__).resolve().parent.parent / "openapi.yaml"
SPEC = yaml.safe_load(SPEC_PATH.read_text())
HUB = 5_500_001
FUZZ_EXAMPLES = int(os.environ.get("BROKER_FUZZ_EXAMPLES", "0"))
schema = schemathesis.openapi.from_path(SPEC_PATH)
# A schema-valid request for a revoked portal's token (or a refresh) is rightly 410 Gone.
schema.config.checks.positive_data_acceptance = PositiveDataAcceptanceConfig(
    expected_statuses=[*schema.config.checks.positive_data_acceptance.expected_statuses, 410]
)
# Every string with U+0000 is refused with a 422 (openapi.yaml's description; PostgreSQL
# stores none): not valid data, so not generated as such. test_hostile_inputs sends them.
schema.config.generation.update(allow_x00=False)
_CURRENT_KEY: dict[str, str] = {}


@schema.auth(refresh_interval=None)  # a new key per deployment: never cache
class CallerKeyAuth:
    """Valid credentials for schemathesis, which then knows when it is testing without them."""

    def get(self, case: schemathesis.Case, context: object) -> str:
        # Collection asks before any deployment exists; a well-formed dud is fine then.
        return _CURRENT_KEY.get("key", "hsb_" + "0" * 16 + "_" + "A" * 43)

    def set(self, case: schemathesis.Case, data: str, context: object) -> None:
        case.headers = {**(case.headers or {}), "Authorization": f"Bearer {data}"}


def _documented() -> set[tuple[str, str]]:
    return {
        (path, method.upper())
        for path, item in SPEC["paths"].items()
        for method in item
        if method in {"get", "post", "put", "patch", "delete"}
    }


def _served(settings: Settings) -> set[tuple[str, str]]:
    app = create_app(settings)
    # The token route and the gateway: raw ASGI in front of the Starlette routes.
    served = {(token_route.PATH, "GET")}
    served |= {(gateway.PATH, method) for method in gateway.METHODS if method != "HEAD"}
    assert isinstance(app.app, gateway.GatewayRoute)
    assert isinstance(app.app.app, Starlette)
    for route in app.app.app.routes:
        assert isinstance(route, Route)
        for method in route.methods or ():
            if method != "HEAD":
                served.add((route.path.replace(":path}", "}"), method))
    return served


def test_every_route_is_documented_and_every_documented_path_is_served(
    settings: Settings,
) -> None:
    assert _served(settings) == _documented()


@pytest.fixture
def deployment(deploy: Deploy) -> Deployment:
    d = deploy(portals=(HUB,), roles=(Role.TOKENS_READ.value, Role.PORTALS_ADMIN.value))
    _CURRENT_KEY["key"] = d.caller_key
    return d


def test_every_documented_token_status_is_produced(deployment: Deployment) -> None:
    """Drive the token endpoint into each documented answer, on real backends."""
    documented = {
        int(code) for code in SPEC["paths"]["/v1/portals/{hub_id}/token"]["get"]["responses"]
    }
    hubs = {name: HUB + i for i, name in enumerate(["ok", "dead", "revoked", "corrupt", "down"])}
    for hub in hubs.values():
        deployment.sim.add_portal(hub)
        assert deployment.install(hub).status_code == 200
    expire = "UPDATE portals SET access_expires_at = now() - interval '1 second' WHERE hub_id = "
    deployment.sim.kill_grant(hubs["dead"])
    sql(deployment.settings, expire + str(hubs["dead"]))
    sql(
        deployment.settings,
        f"UPDATE portals SET state = 'revoked' WHERE hub_id = {hubs['revoked']}",
    )
    sql(
        deployment.settings,
        f"UPDATE portals SET access_ct = 'vault:v1:AAAAAAAAAAAAAAAAAAAAAAAAAAAA' "
        f"WHERE hub_id = {hubs['corrupt']}",
    )
    sql(deployment.settings, expire + str(hubs["down"]))

    answers: dict[int, httpx.Response] = {}
    answers[200] = deployment.token(hubs["ok"], min_ttl=0)
    with deployment.client() as anonymous:
        answers[401] = anonymous.get(f"/v1/portals/{hubs['ok']}/token")
    answers[403] = deployment.token(hubs["ok"], app="elsewhere")
    answers[404] = deployment.token(999)
    answers[409] = deployment.token(hubs["dead"], min_ttl=0)
    answers[410] = deployment.token(hubs["revoked"], min_ttl=0)
    answers[422] = deployment.token(hubs["ok"], min_ttl="soon")
    answers[500] = deployment.token(hubs["corrupt"], min_ttl=0)
    deployment.sim.add_fault("token", status=503)
    answers[503] = deployment.token(hubs["down"], min_ttl=0)

    async def slow_caller() -> str:
        async with open_admin(deployment.settings) as svc:
            new = await svc.callers.create("slow", apps=["demo"], rate_limit=0.5, actor="test")
            return new.secret

    slow = asyncio.run(slow_caller())
    with deployment.client(headers={"Authorization": f"Bearer {slow}"}) as client:
        path = f"/v1/portals/{hubs['ok']}/token"
        limited = [client.get(path, params={"min_ttl": 0}) for _ in range(3)]
    assert [r.status_code for r in limited[:1]] == [200]
    answers[429] = limited[-1]
    assert int(answers[429].headers["retry-after"]) >= 1

    for status, response in answers.items():
        assert response.status_code == status, (status, response.text)
        wanted = "application/json" if status == 200 else "application/problem+json"
        assert response.headers["content-type"] == wanted
    assert set(answers) == documented


# --- hostile inputs: what the schema does not describe ---------------------------------------
#: Must never come back in a response (an attacker's words on our pages).
CANARY = "zq-echo-canary"
# Characters str.isdigit() accepts but int() may not, and other non-ASCII text.
_UNICODE_DIGITS = "\u00b2\u00b3\u00b9\u0663\u06f4\u07c1\u0967\u09e7\u0e51\u1811\uff11\U0001d7d9"
_ODD_TEXT = st.one_of(
    st.text(st.sampled_from(_UNICODE_DIGITS), min_size=1, max_size=4),
    st.text(
        st.characters(min_codepoint=0x80, exclude_categories=("Cs", "Cc")), min_size=1, max_size=12
    ),
    st.sampled_from(["1\u00b2", "\u202e1", "1\u0301", "\ufeff1", "\uff11\uff12", "\u00a0"]),
)
_JSON_TYPE = {"Content-Type": "application/json"}


def _nested(depth: int, opener: str) -> bytes:
    closer = "]" if opener == "[" else "}"
    inner = "[" if opener == "[" else '{"reason":'
    return (inner * depth + "1" + closer * depth).encode()


def _chunks(size: int) -> Iterator[bytes]:
    for _ in range(size // 8192 + 1):  # a generator: sent chunked, with no Content-Length
        yield b" " * 8192


_HEADERS = st.sampled_from(
    [
        {"Authorization": "Bearer"},
        {"Authorization": "Bearer " + "A" * 4000},
        {"Authorization": b"Bearer hsb_\xff\xfe\xc3\x28"},
        {"Authorization": "Basic dXNlcjpwYXNz"},
        {"Authorization": "bearer  hsb_" + "0" * 16 + "_" + "A" * 43 + "  "},
        {"Authorization": "Bearer eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0."},
        {"X-Request-ID": b"\xff" * 10},
        {"X-Request-ID": "x" * 3000},
        {"X-Forwarded-For": "not-an-ip, \u00ff", "X-Forwarded-Proto": "gopher"},
        {"Content-Type": "application/json; charset=utf-16"},
        {"Content-Type": "multipart/form-data; boundary="},
        {"Content-Type": b"application/x-www-form-urlencoded\xff"},
        {"Accept": "application/json, text/html;q=\u00ff"},
        {"Cookie": "htb_admin=" + "A" * 3000 + "; htb_install=%ff%fe"},
        {"Cookie": "htb_admin=e30.e30; htb_admin=x.y"},
        {"Origin": "null", "Sec-Fetch-Site": "\u00ffcross"},
        {"Host": "evil.example"},
    ]
)


@dataclass(frozen=True)
class Hostile:
    """One way to break a schema-valid request: the class it belongs to, and its payload."""

    kind: str
    text: str = ""
    depth: int = 0
    size: int = 0
    headers: dict[str, str | bytes] = field(default_factory=dict)

    def apply(self, case: schemathesis.Case) -> dict[str, object]:
        """Change ``case`` in place; returns extra transport arguments for the call."""
        if self.kind == "unicode_path":
            for name in case.path_parameters or {}:
                case.path_parameters[name] = self.text  # type: ignore[index]
        elif self.kind == "unicode_query":
            case.query = {name: self.text for name in case.query or {"app": ""}}
        elif self.kind == "unknown_names":
            case.query = {**(case.query or {}), f"{CANARY} {self.text}": "1", f"<i>{CANARY}": "x"}
        elif self.kind == "nested_body":
            return {"data": _nested(self.depth, self.text), "headers": _JSON_TYPE}
        elif self.kind == "oversized_body":
            body: object = b" " * self.size if self.depth == 0 else _chunks(self.size)
            return {"data": body, "headers": _JSON_TYPE}
        elif self.kind == "odd_headers":
            return {"headers": dict(self.headers)}
        return {}


HOSTILE = st.one_of(
    st.builds(Hostile, st.just("unicode_path"), _ODD_TEXT),
    st.builds(Hostile, st.just("unicode_query"), _ODD_TEXT),
    st.builds(Hostile, st.just("unknown_names"), _ODD_TEXT),
    st.builds(
        Hostile,
        st.just("nested_body"),
        st.sampled_from(["[", "{"]),
        depth=st.integers(900, 16_000),
    ),
    st.builds(
        Hostile,
        st.just("oversized_body"),
        depth=st.integers(0, 1),
        size=st.integers(16 * 1024 + 1, 512 * 1024),
    ),
    st.builds(Hostile, st.just("odd_headers"), headers=_HEADERS),
)


#: Half of the fuzz cases are broken one hostile way, the other half are sent as generated.
MAYBE_HOSTILE = st.tuples(st.booleans(), HOSTILE).map(lambda pair: pair[1] if pair[0] else None)


@schema.parametrize()
@schema.given(hostile=MAYBE_HOSTILE)
@hsettings(
    max_examples=FUZZ_EXAMPLES or 60,
    deadline=None,
    derandomize=not FUZZ_EXAMPLES,  # `make test`: the same cases every run; `make fuzz`: new ones
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
def test_schemathesis_finds_no_5xx_and_no_schema_violation(
    case: schemathesis.Case, hostile: Hostile | None, deployment: Deployment
) -> None:
    """Schema-valid cases, and the same cases broken one way the schema cannot say
    (:class:`Hostile`): every answer documented, none a 5xx, none repeating the canary."""
    if not getattr(deployment, "_installed", False):
        assert deployment.install(HUB).status_code == 200
        deployment._installed = True  # type: ignore[attr-defined]
    if case.path == "/v1/portals/{hub_id}/token" and case.path_parameters is not None:
        # Half of the cases ask for the installed portal, so the 200 branch is exercised.
        hub_id = case.path_parameters.get("hub_id")
        if isinstance(hub_id, int) and hub_id % 2 == 0:
            case.path_parameters["hub_id"] = HUB
    excluded = _excluded_checks(case)
    if hostile is not None:
        excluded = [positive_data_acceptance]  # a case made hostile is not valid data
    FUZZ_COUNTS["cases"] += 1
    extra = {}
    if hostile is not None:
        FUZZ_COUNTS[f"hostile_{hostile.kind}"] += 1
        extra = hostile.apply(case)
    try:
        response = case.call_and_validate(
            base_url=deployment.url, excluded_checks=excluded, **extra
        )
    except FailureGroup as group:
        for failure in group.exceptions:
            FUZZ_COUNTS[_kind(failure)] += 1
        raise
    if CANARY in response.text:
        FUZZ_COUNTS["echoes"] += 1
        raise AssertionError(f"the response repeats a parameter name: {response.text[:300]}")


def _excluded_checks(case: schemathesis.Case) -> list[CheckFunction]:
    if case.path in ("/oauth/callback", "/oauth/install", "/v1/admin/apps/{app}/install-links"):
        # Any state schemathesis can invent is unknown to the broker, any return_to it
        # invents is on an origin nobody allowed, and any link it invents is not signed:
        # such schema-valid requests are rightly refused (400 install_state_invalid, 422,
        # 403 install_link_*), so that one check cannot apply.
        return [positive_data_acceptance]
    if case.path == "/v1/admin/audit":
        # Any cursor schemathesis invents is not one the broker made, and a date-time it
        # invents may be one Python does not read (a leap second): rightly 422.
        return [positive_data_acceptance]
    return []


def _kind(failure: BaseException) -> str:
    if isinstance(failure, ServerError):
        return "server_errors"
    if isinstance(failure, IgnoredAuth):
        return "unauthorized_successes"
    if isinstance(failure, (JsonSchemaError, UndefinedStatusCode, UndefinedContentType)):
        return "schema_violations"
    return "other_failures"


# --- stateful phase: sequences of calls along the links openapi.yaml documents -----------
#: Portals the simulator installs before the sequences start (the one above, and these).
SEQUENCE_HUBS = tuple(range(HUB + 1, HUB + 5))
#: Portals that app install links followed in a sequence install, one new one each time.
_NEW_HUBS = iter(range(HUB + 1000, HUB + 1_000_000))
#: Every sequence starts from the portal list, then follows links to a listed portal (its
#: token, show, quarantine, release, revoke, refresh, a link to install it again, an
#: install link for its app) and on from each answer.
_ENTRY = "GET /v1/admin/portals"
_ENTRY_RULE = normalize_name(f"RANDOM -> {_ENTRY}")

schema.config.phases.stateful.inference.algorithms = []  # only the documented links
# The stateless phase sends invalid and unauthenticated requests; these sequences are the
# authorized caller's, acting on real portals.
schema.config.phases.stateful.generation.modes = [GenerationMode.POSITIVE]
_Links = schema.as_state_machine()


class PortalSequences(_Links):  # type: ignore[misc, valid-type]
    """Schemathesis' link-following state machine, run as the stateless phase's caller
    (``CallerKeyAuth``) against :attr:`deployment`, with the same checks and counts. An
    install link answered in a sequence is followed through the simulator's consent, so
    later steps act on the portal it installed (again)."""

    deployment: Deployment

    def setup(self) -> None:
        self.steps = 0

    def teardown(self) -> None:
        if self.steps:  # Hypothesis also starts machines it then abandons before a step
            FUZZ_COUNTS["stateful_sequences"] += 1

    def step(self, input: StepInput) -> StepOutput | None:  # type: ignore[override]
        if input.transition is not None:
            if not _names_a_portal(input.transition):
                return None  # e.g. from an empty list: nothing to act on, no call
            _name_the_linked_portal(input)
        return super().step(input)

    def get_call_kwargs(self, case: schemathesis.Case) -> dict[str, object]:
        return {"base_url": self.deployment.url}

    def validate_response(  # type: ignore[override]
        self, response: Response, case: schemathesis.Case, **kwargs: object
    ) -> None:
        FUZZ_COUNTS["stateful_steps"] += 1
        self.steps += 1
        try:
            case.validate_response(
                response,
                excluded_checks=_excluded_checks(case),
                transport_kwargs=kwargs or None,
                recorder=self.recorder,
            )
        except FailureGroup as group:
            FUZZ_COUNTS["stateful_failures"] += 1
            for failure in group.exceptions:
                FUZZ_COUNTS[_kind(failure)] += 1
            raise
        if case.operation.label in _INSTALL_LINKS and response.status_code == 200:
            link = response.json()
            # A link asked for with "ttl": 1 may expire before it is followed (its expiry
            # is whole seconds).
            if datetime.fromisoformat(link["expires_at"]) > datetime.now(UTC) + _LINK_MARGIN:
                self._install(case, link["url"])

    def _install(self, case: schemathesis.Case, url: str) -> None:
        path = case.path_parameters or {}
        hub_id = path["hub_id"] if "hub_id" in path else next(_NEW_HUBS)
        self.deployment.sim.add_portal(hub_id)
        answer = self.deployment.install(hub_id, link=url)
        FUZZ_COUNTS["stateful_installs"] += 1
        if answer.status_code != 200:
            FUZZ_COUNTS["stateful_failures"] += 1
            FUZZ_COUNTS["other_failures"] += 1
            raise AssertionError(f"the install link {url} failed: {answer.status_code}")


def _names_a_portal(transition: Transition) -> bool:
    """Whether the link found a value for each required parameter (a list may be empty)."""
    return all(
        isinstance(extracted.value, Ok) and extracted.value.ok() not in (None, UNRESOLVABLE)
        for parameters in transition.parameters.values()
        for extracted in parameters.values()
        if extracted.is_required
    )


def _name_the_linked_portal(input: StepInput) -> None:
    """Send the portal the link names. Schemathesis leaves out a value a link gives about
    half the time for an optional parameter (``app``, ``user_id``), and generates one of
    its own instead or skips a null one; the stateless phase sends such values already,
    while this phase is for sequences on one existing portal."""
    assert input.transition is not None
    applied = {name for _, name in input.applied_parameters}
    for container, parameters in input.transition.parameters.items():
        values = getattr(input.case, container) or {}
        for name, extracted in parameters.items():
            if name in applied or not isinstance(extracted.value, Ok):
                continue
            value = extracted.value.ok()
            if isinstance(value, MultiMatch):  # one of a list's portals: only if all agree
                if any(other != value.values[0] for other in value.values):
                    continue
                value = value.values[0]
            if value is None:  # a portal without a user, or a request without an app
                values.pop(name, None)
            elif value is not UNRESOLVABLE:
                values[name] = value
        setattr(input.case, container, values)


_LINK_MARGIN = timedelta(seconds=2)
_INSTALL_LINKS = {
    "POST /v1/admin/portals/{hub_id}/install-link",
    "POST /v1/admin/apps/{app}/install-links",
}
for _rule in PortalSequences.root_rules - {_ENTRY_RULE}:
    setattr(PortalSequences, _rule, None)  # hides the rule: no sequence starts there
PortalSequences.root_rules = frozenset({_ENTRY_RULE})
PortalSequences._root_labels = frozenset({_ENTRY})


@pytest.mark.timeout(120 + FUZZ_EXAMPLES)  # `make fuzz`: about 0.2 s a sequence
def test_schemathesis_stateful_sequences_on_installed_portals(deployment: Deployment) -> None:
    """Sequences along the links (list → a listed portal's token, quarantine, release,
    revoke, refresh, install link → its token ...) on portals installed through the
    simulator: every answer documented, none a 5xx, none a success without credentials."""
    for hub_id in (HUB, *SEQUENCE_HUBS):
        deployment.sim.add_portal(hub_id)
        assert deployment.install(hub_id).status_code == 200
    PortalSequences.deployment = deployment
    wanted = FUZZ_EXAMPLES or 15
    started, failed = FUZZ_COUNTS["stateful_sequences"], FUZZ_COUNTS["stateful_failures"]
    while (done := FUZZ_COUNTS["stateful_sequences"] - started) < wanted:
        try:
            PortalSequences.run(
                settings=hsettings(
                    max_examples=wanted - done,
                    stateful_step_count=8,
                    deadline=None,
                    database=None,
                    phases=[Phase.generate],
                    suppress_health_check=list(HealthCheck),
                )
            )
            break
        except (Flaky, AssertionError) as exc:
            # Each sequence changes the broker's state (a portal revoked, quarantined,
            # installed), so Hypothesis cannot replay earlier choices to the same sequence
            # and says so; the schemathesis engine starts over then, and so does this.
            if FUZZ_COUNTS["stateful_failures"] > failed or not (
                isinstance(exc, Flaky) or is_inconsistent_replay(exc)
            ):
                raise
            FUZZ_COUNTS["stateful_restarts"] += 1
    assert FUZZ_COUNTS["stateful_failures"] == failed
