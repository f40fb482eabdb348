"""Query parameters and headers shared by the routes: strict parsing, 422s that name the field."""

from __future__ import annotations

from collections.abc import Iterable

from starlette.requests import Request

from broker.core.models import APP_SLUG
from broker.errors import InvalidRequest

_MAX_BIGINT = 2**63 - 1


def parse_int(raw: str | None, name: str, *, minimum: int = 1) -> int | None:
    """An integer in [minimum, 2**63-1], ``None`` when absent, else a 422 naming it."""
    if raw is None:
        return None
    if not raw.isdigit() or len(raw) > 19 or not minimum <= int(raw) <= _MAX_BIGINT:
        raise InvalidRequest(
            f"{name} must be an integer >= {minimum}",
            errors=[{"field": name, "message": f"not an integer >= {minimum}"}],
        )
    return int(raw)


def reject_unknown(request: Request, allowed: frozenset[str]) -> None:
    """Unknown query parameters are a 422: a typo like ``min_tll`` must not pass silently."""
    check_names(request.query_params.keys(), allowed)


def check_names(names: Iterable[str], allowed: frozenset[str]) -> None:
    unknown = sorted(set(names) - allowed)
    if unknown:
        raise InvalidRequest(
            f"unknown query parameter(s): {', '.join(unknown)[:200]}",
            errors=[{"field": name[:64], "message": "unknown parameter"} for name in unknown[:10]],
        )


def parse_app(raw: str | None, default: str) -> str:
    """The ``app`` query parameter: absent means the default app; empty is an error."""
    app = default if raw is None else raw
    if not APP_SLUG.match(app):
        raise InvalidRequest(
            "app must be an app slug: 1-63 lowercase letters, digits or '-'",
            errors=[{"field": "app", "message": "not an app slug"}],
        )
    return app


def bearer(request: Request) -> str | None:
    return bearer_value(request.headers.get("authorization"))


def bearer_value(header: str | None) -> str | None:
    """The credential of an ``Authorization: Bearer ...`` header, else ``None``."""
    if header is None:
        return None
    scheme, _, value = header.partition(" ")
    return value.strip() if scheme.lower() == "bearer" else None
