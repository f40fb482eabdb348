"""Query parameters, headers and JSON bodies shared by the routes: strict parsing, 422s that
name the field (never echoing what the request sent: an attacker's words must not appear on
our pages), 413 for a body over its limit."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Any

from starlette.requests import Request

from broker.core.models import APP_SLUG
from broker.errors import InvalidRequest, PayloadTooLarge

_MAX_BIGINT = 2**63 - 1
# ASCII digits only: str.isdigit() also accepts "²" or "٣", which int() then refuses.
_DIGITS = re.compile(r"[0-9]{1,19}\Z")
#: The operator API's JSON bodies are a reason or two link options: a few hundred bytes.
MAX_JSON_BODY = 16 * 1024


def parse_int(raw: str | None, name: str, *, minimum: int = 1) -> int | None:
    """An integer in [minimum, 2**63-1], ``None`` when absent, else a 422 naming it."""
    if raw is None:
        return None
    # ASCII digits only: str.isdigit() alone also accepts "²" or "٣", which int() refuses.
    if raw.isascii() and raw.isdigit() and len(raw) <= 19:
        value = int(raw)
        if minimum <= value <= _MAX_BIGINT:
            return value
    raise InvalidRequest(
        f"{name} must be an integer >= {minimum}",
        errors=[{"field": name, "message": f"not an integer >= {minimum}"}],
    )


def reject_unknown(request: Request, allowed: frozenset[str]) -> None:
    """Unknown query parameters are a 422: a typo like ``min_tll`` must not pass silently."""
    check_names(request.query_params.keys(), allowed)


def check_names(names: Iterable[str], allowed: frozenset[str]) -> None:
    """The names are not repeated back: the routes' pages show the detail to people."""
    if set(names) - allowed:
        accepted = ", ".join(sorted(allowed)) or "none"
        raise InvalidRequest(
            f"unknown query parameter(s); this route accepts: {accepted}",
            errors=[{"field": "query", "message": f"unknown parameter(s); accepted: {accepted}"}],
        )


async def json_body(request: Request, *, limit: int = MAX_JSON_BODY) -> Any:
    """The request's JSON body, ``None`` when empty. Over ``limit`` bytes: 413, refused on
    its ``Content-Length`` or as soon as the stream passes the limit; not JSON, or nested
    deeper than the decoder's recursion limit: 422 (never a ``RecursionError`` 500)."""
    declared = request.headers.get("content-length", "")
    if _DIGITS.match(declared) and int(declared) > limit:
        raise PayloadTooLarge(f"the body is larger than {limit} bytes")
    raw = bytearray()
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > limit:
            raise PayloadTooLarge(f"the body is larger than {limit} bytes")
    if not raw:
        return None
    try:
        body = json.loads(raw)
    except RecursionError:
        raise InvalidRequest("the body is nested too deeply") from None
    except ValueError as exc:  # also UnicodeDecodeError
        raise InvalidRequest("the body is not JSON") from exc
    if _has_nul(body):
        # PostgreSQL stores no U+0000 in text or jsonb: refused here, before anything is
        # done, rather than failing a statement halfway through an operation.
        raise InvalidRequest("strings in the body may not contain U+0000")
    return body


def _has_nul(value: Any) -> bool:
    """Whether any string in a decoded JSON value (keys too) contains U+0000. A loop, not
    recursion: the decoder takes nesting deeper than a recursive walk would survive."""
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            if "\x00" in item:
                return True
        elif isinstance(item, dict):
            pending.extend(item)
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
    return False


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


def bearer_of(header: bytes | None) -> str | None:
    """:func:`bearer_value` of a raw ``Authorization`` header (ASGI's bytes, Latin-1)."""
    return None if header is None else bearer_value(header.decode("latin-1"))
