"""What every management route shares: the caller and its role, strict JSON bodies, answers
that are never cached, and Vault refusals of the broker's own policy as a clear 403."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from broker.core.models import Caller, Role
from broker.errors import Forbidden, InvalidRequest, VaultError, VaultPolicyDenied
from broker.web.params import bearer, check_names, json_body, parse_int
from broker.web.services import Services, services

_NO_STORE = {"Cache-Control": "no-store"}


async def authorize(request: Request, role: Role) -> tuple[Services, Caller]:
    """The authenticated, admitted caller, if it has ``role``; else 401/429/403."""
    svc = services(request)
    caller = await svc.callers.authenticate(bearer(request))
    svc.callers.admit(caller)
    if not caller.may(role):
        raise Forbidden(f"caller {caller.name!r} lacks the {role.value} role")
    return svc, caller


def need_unlimited(caller: Caller, what: str) -> None:
    """Actions on what belongs to no app (keys, retention) need a caller limited to none."""
    if not caller.unlimited:
        raise Forbidden(f"caller {caller.name!r} is limited to some apps or hubs: {what}")


def need_app(caller: Caller, app: str) -> None:
    if not caller.may_manage_app(app):
        raise Forbidden(f"caller {caller.name!r} may not manage app {app!r}")


def reply(data: Any, status: int = 200) -> Response:
    return JSONResponse(data, status_code=status, headers=_NO_STORE)


@contextmanager
def vault_policy(needs: str) -> Iterator[None]:
    """Vault refusing the broker's own token (``vault_forbidden``, a 503 elsewhere) is here
    a 403 ``vault_policy_denied`` naming what to do: the replicas' least-privilege policy
    lacks what this request needs, and retrying will not help."""
    try:
        yield
    except VaultError as exc:
        if exc.code != "vault_forbidden":
            raise
        raise VaultPolicyDenied(
            f"the broker's Vault policy does not allow this ({needs}); run the `broker` "
            "command locally under the operator's Vault policy, or grant the replicas "
            "deploy/vault/broker-management.hcl (docs/operations.md)"
        ) from exc


def whole(value: Any) -> Any:
    """JSON Schema's integers include ``7.0``: such a float as the int it is (anything
    else unchanged, for the caller's type check)."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**63:
        return int(value)
    return value


def _invalid(field: str, message: str) -> InvalidRequest:
    return InvalidRequest(f"{field}: {message}", errors=[{"field": field, "message": message}])


class Body:
    """A JSON object body with known fields only; each getter refuses a wrong type with a
    422 naming the field (never repeating the value)."""

    def __init__(self, data: dict[str, Any]) -> None:
        self._data = data

    @classmethod
    async def read(cls, request: Request, fields: frozenset[str]) -> Body:
        data = await json_body(request)
        if data is None:
            return cls({})
        if not isinstance(data, dict):
            raise InvalidRequest("the body must be a JSON object")
        check_names(data.keys(), fields)
        return cls(data)

    def has(self, name: str) -> bool:
        return name in self._data

    def text(self, name: str, *, required: bool = False, limit: int = 2048) -> str | None:
        value = self._data.get(name)
        if value is None:
            if required:
                raise _invalid(name, "required")
            return None
        if not isinstance(value, str) or not value or len(value) > limit:
            raise _invalid(name, f"a string of 1-{limit} characters")
        return value

    def _items(
        self, name: str, limit: int, fits: Callable[[Any], bool], what: str
    ) -> list[Any] | None:
        value = self._data.get(name)
        if value is None:
            return None
        if not isinstance(value, list) or len(value) > limit or not all(map(fits, value)):
            raise _invalid(name, f"a list of at most {limit} {what}")
        return value

    def texts(self, name: str, *, limit: int = 256) -> list[str] | None:
        return self._items(
            name, limit, lambda v: isinstance(v, str) and 0 < len(v) <= 256, "strings"
        )

    def integers(self, name: str, *, limit: int = 10_000) -> list[int] | None:
        found = self._items(
            name,
            limit,
            lambda v: type(whole(v)) is int and 1 <= v < 2**63,
            "positive integers",
        )
        return None if found is None else [int(v) for v in found]

    def integer(self, name: str, *, minimum: int, maximum: int) -> int | None:
        value = whole(self._data.get(name))
        if value is None:
            return None
        if type(value) is not int or not minimum <= value <= maximum:
            raise _invalid(name, f"an integer {minimum}-{maximum}")
        return value

    def number(self, name: str, *, minimum: float, maximum: float) -> float | None:
        value = self._data.get(name)
        if value is None:
            return None
        if type(value) not in (int, float) or not minimum <= value <= maximum:
            raise _invalid(name, f"a number {minimum:g}-{maximum:g}")
        return float(value)

    def flag(self, name: str) -> bool | None:
        value = self._data.get(name)
        if value is not None and not isinstance(value, bool):
            raise _invalid(name, "true or false")
        return value

    def time(self, name: str) -> datetime | None:
        raw = self.text(name, limit=64)
        return None if raw is None else parse_time(raw, name)


def parse_time(raw: str, name: str) -> datetime:
    """An ISO 8601 time, in UTC (UTC when it names no offset). A time that leaves the
    calendar once in UTC (year 1 at +01:00) is a 422, not an overflow in the database."""
    try:
        value = datetime.fromisoformat(raw)
        return (value if value.tzinfo else value.replace(tzinfo=UTC)).astimezone(UTC)
    except (ValueError, OverflowError) as exc:
        raise _invalid(name, "an ISO 8601 time, e.g. 2026-11-29T08:00:00+00:00") from exc


def query_time(request: Request, name: str) -> datetime | None:
    raw = request.query_params.get(name)
    return None if raw is None else parse_time(raw, name)


def query_flag(request: Request, name: str) -> bool:
    raw = request.query_params.get(name)
    if raw is None:
        return False
    if raw not in ("true", "false"):
        raise _invalid(name, "true or false")
    return raw == "true"


def query_limit(request: Request, *, default: int, maximum: int) -> int:
    limit = parse_int(request.query_params.get("limit"), "limit") or default
    if limit > maximum:
        raise _invalid("limit", f"at most {maximum}")
    return limit


def query_text(request: Request, name: str, *, limit: int = 256) -> str | None:
    raw = request.query_params.get(name)
    if raw is not None and not 0 < len(raw) <= limit:
        raise _invalid(name, f"1-{limit} characters")
    return raw
