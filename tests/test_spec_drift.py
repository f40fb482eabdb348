"""``openapi.yaml`` against what schemathesis cannot reach: the two clients (clients/python,
clients/typescript) and the webhook events.

The clients must read the token answer exactly as the spec describes it and map every
problem ``code`` the token route documents to the same error class; the broker's webhook
events must each be documented, and the body it renders must match the documented schema.
"""

from __future__ import annotations

import json
import re
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from hubspot_token_broker_client import (
    PROBLEM_CODES,
    BrokerClientError,
    BrokerUnavailable,
    InvalidRequest,
    NeedsReauth,
    PortalNotFound,
    PortalRevoked,
    Quarantined,
    RateLimited,
    ServerError,
    Unauthorized,
)
from hubspot_token_broker_client._errors import error_from_response
from hubspot_token_broker_client._token import TOKEN_FIELDS, parse_token
from jsonschema import Draft202012Validator

from broker.core import webhooks
from broker.core.models import PortalState
from tests import typescript

ROOT = Path(__file__).resolve().parent.parent
SPEC: dict[str, Any] = yaml.safe_load((ROOT / "openapi.yaml").read_text())
TOKEN_OPERATION = SPEC["paths"]["/v1/portals/{hub_id}/token"]["get"]


def _spec_token_fields() -> dict[str, tuple[str, bool]]:
    """The Token schema as (JSON type, required) per field, in the clients' notation."""
    schema = SPEC["components"]["schemas"]["Token"]
    fields = {}
    for name, prop in schema["properties"].items():
        kind = prop["type"]
        if kind == "array":
            kind = f"array<{prop['items']['type']}>"
        fields[name] = (kind, name in schema["required"])
    return fields


def _documented_codes() -> list[tuple[int, str]]:
    """Every (status, problem code) the token route documents."""
    pairs = []
    for status, response in TOKEN_OPERATION["responses"].items():
        if status.startswith("2"):
            continue
        schema = response["content"]["application/problem+json"]["schema"]
        (narrowing,) = (part for part in schema["allOf"] if "$ref" not in part)
        pairs += [(int(status), code) for code in narrowing["properties"]["code"]["enum"]]
    return pairs


def _sample(kind: str) -> object:
    return {"string": "x", "integer": 7, "boolean": False, "array<string>": ["a"]}[kind]


# --- the Python client ----------------------------------------------------------------------
def test_python_client_reads_the_token_as_specified() -> None:
    assert _spec_token_fields() == TOKEN_FIELDS
    body = {name: _sample(kind) for name, (kind, _) in TOKEN_FIELDS.items()}
    token, expires_in = parse_token(httpx.Response(200, json=body), datetime.now(UTC))
    assert (token.hub_id, token.user_id, token.scopes, expires_in) == (7, 7, ("a",), 7)
    for name, (_, required) in TOKEN_FIELDS.items():
        if required:  # the table is what the parser checks: a missing field is refused
            partial = {k: v for k, v in body.items() if k != name}
            with pytest.raises(BrokerClientError, match=name):
                parse_token(httpx.Response(200, json=partial), datetime.now(UTC))


#: The error class family of each status (409 is split by code).
FAMILIES: dict[int, type[BrokerClientError]] = {
    401: Unauthorized,
    403: Unauthorized,
    404: PortalNotFound,
    410: PortalRevoked,
    422: InvalidRequest,
    429: RateLimited,
    500: ServerError,
    503: BrokerUnavailable,
}
CONFLICTS = {"needs_reauth": NeedsReauth, "quarantined": Quarantined}


def test_python_client_maps_every_documented_problem_code() -> None:
    documented = _documented_codes()
    assert {code for _, code in documented} == set(PROBLEM_CODES)  # none missing, none stale
    for status, code in documented:
        problem = {"type": "t", "title": "t", "status": status, "code": code, "detail": "d"}
        error = error_from_response(httpx.Response(status, json=problem))
        assert type(error) is PROBLEM_CODES[code], (status, code)
        family = CONFLICTS[code] if status == 409 else FAMILIES[status]
        assert type(error) is family, (status, code)
        assert (error.status, error.code) == (status, code)


def test_python_client_reads_the_min_ttl_cap_where_the_spec_puts_it() -> None:
    item = SPEC["components"]["schemas"]["Problem"]["properties"]["errors"]["items"]
    assert item["properties"]["maximum"]["type"] == "integer"
    errors = [{"field": "min_ttl", "message": "out of range", "minimum": 0, "maximum": 900}]
    problem = {"code": "invalid_request", "detail": "d", "errors": errors}
    error = error_from_response(httpx.Response(422, json=problem))
    assert isinstance(error, InvalidRequest)
    assert error.min_ttl_max == 900


# --- the TypeScript client ------------------------------------------------------------------
_DESCRIBE = """
const client = await import(process.argv[1]);
const pairs = JSON.parse(process.argv[2]);
const classified = pairs.map(([status, code]) => {
  const body = {type: "t", title: "t", status, code, detail: "d",
                errors: [{field: "min_ttl", message: "out of range", minimum: 0, maximum: 900}]};
  const error = client.errorFromProblem(status, "", new Headers(), body);
  return [status, code, error.constructor.name, error.status, error.code, error.minTtlMax ?? null];
});
const tables = Object.fromEntries(
  Object.entries(client.PROBLEM_CODES).map(([code, cls]) => [code, cls.name]));
console.log(JSON.stringify({fields: client.TOKEN_FIELDS, codes: tables, classified}));
"""


@pytest.fixture(scope="module")
def typescript_description() -> dict[str, Any]:
    entry = typescript.build()
    assert typescript.NODE is not None
    done = subprocess.run(
        [
            typescript.NODE,
            "--input-type=module",
            "-e",
            _DESCRIBE,
            entry.as_uri(),
            json.dumps(_documented_codes()),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    description: dict[str, Any] = json.loads(done.stdout)
    return description


@typescript.needs_node
def test_typescript_client_reads_the_token_as_specified(
    typescript_description: dict[str, Any],
) -> None:
    fields = {
        name: (spec["type"], spec["required"])
        for name, spec in typescript_description["fields"].items()
    }
    assert fields == _spec_token_fields()
    # TokenResponse is derived from TOKEN_FIELDS (a mapped type), not written out again.
    source = (typescript.TS_DIR / "src" / "token.ts").read_text()
    assert re.search(r"export type TokenResponse = \{ \[N in RequiredNames\]", source)


@typescript.needs_node
def test_typescript_client_maps_every_documented_problem_code_as_python_does(
    typescript_description: dict[str, Any],
) -> None:
    assert set(typescript_description["codes"]) == set(PROBLEM_CODES)
    python_names = {code: cls.__name__ for code, cls in PROBLEM_CODES.items()}
    assert typescript_description["codes"] == python_names  # the same class per code
    for status, code, name, got_status, got_code, cap in typescript_description["classified"]:
        assert name == python_names[code], (status, code)
        assert (got_status, got_code) == (status, code)
        assert cap == (900 if name == "InvalidRequest" else None)


# --- webhook events -------------------------------------------------------------------------
#: Event types written as ``portal.{state.value}``: the states those calls are made with
#: (operations.quarantine / release; refresh failures, transient or a dead grant).
STATE_EVENTS = {
    PortalState.QUARANTINED,
    PortalState.ACTIVE,
    PortalState.REFRESH_FAILING,
    PortalState.NEEDS_REAUTH,
}
#: What each event's ``data`` holds, as the code that writes the event builds it.
PAYLOADS: dict[str, dict[str, object]] = {
    "portal.installed": {"scopes": ["oauth"]},
    "portal.refresh_failing": {"class": "upstream_unavailable"},
    "portal.needs_reauth": {"class": "grant_dead"},
    "portal.recovered": {"healed": True},
    "portal.quarantined": {},
    "portal.active": {},
    "portal.revoked": {"reason": "offboarded", "actor": "ops"},
    "portal.flagged": {"error": "vault_unavailable"},
    "app.misconfigured": {"reason": "app_misconfigured"},
}


def _emitted_types() -> set[str]:
    adapters = sorted((ROOT / "broker" / "adapters" / "postgres").glob("*.py"))
    source = "\n".join(path.read_text() for path in adapters)
    literal = set(re.findall(r'_event\(conn, "([a-z_.]+)"', source))
    literal |= set(re.findall(r"INSERT INTO events \([^)]*\) VALUES \('([a-z_.]+)'", source))
    literal |= set(re.findall(r"INSERT INTO events \([^)]*\)\s+SELECT '([a-z_.]+)'", source))
    assert source.count('f"portal.{state.value}"') == 2  # the calls STATE_EVENTS describes
    return literal | {f"portal.{state.value}" for state in STATE_EVENTS}


def test_every_webhook_event_is_documented() -> None:
    assert set(SPEC["webhooks"]) == _emitted_types() == set(PAYLOADS)


@pytest.mark.parametrize("event_type", sorted(PAYLOADS))
def test_a_rendered_webhook_body_matches_its_documented_schema(event_type: str) -> None:
    operation = SPEC["webhooks"][event_type]["post"]
    pointer = f"#/webhooks/{event_type}/post/requestBody/content/application~1json/schema"
    validator = Draft202012Validator({**SPEC, "$ref": pointer})
    is_app = event_type.startswith("app.")
    event = webhooks.OutboxEvent(
        id=42,
        type=event_type,
        app="demo",
        hub_id=None if is_app else 12345678,
        user_id=None,
        payload=PAYLOADS[event_type],
        at=datetime.now(UTC),
        attempts=1,
        delivery_id=1,
        endpoint="e",
    )
    body = json.loads(webhooks.render(event))
    assert not list(validator.iter_errors(body)), list(validator.iter_errors(body))
    wrong = {**body, "type": "portal.other"}
    assert list(validator.iter_errors(wrong))  # the schema pins the type: it can fail
    headers = {p["$ref"].rsplit("/", 1)[1] for p in operation["parameters"]}
    assert headers == {"WebhookId", "WebhookTimestamp", "WebhookSignature"}
