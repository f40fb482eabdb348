"""Structured logs: structlog events, JSON outside dev, one redaction processor for every
logger (ours, uvicorn's, httpx's, asyncpg's), and a request id per request.

The redactor knows the field names that carry secrets and the shapes of tokens, and masks
both in event fields and inside free-text messages (a URL with ``?code=...`` included).
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Mapping, MutableMapping
from contextvars import ContextVar
from typing import Any

import structlog

REQUEST_ID: ContextVar[str | None] = ContextVar("request_id", default=None)
REDACTED = "[REDACTED]"

_SECRET_FIELDS = frozenset(
    {
        "access_token",
        "refresh_token",
        "client_secret",
        "client_secrets",
        "code",
        "code_verifier",
        "token",
        "secret",
        "password",
        "authorization",
        "cookie",
        "set-cookie",
        "key",
        "caller_key",
        "vault_token",
        "secret_id",
        "state",
    }
)
_TOKEN_SHAPES = re.compile(
    r"hsb_[0-9a-f]{16}_[A-Za-z0-9_-]{20,}"  # broker caller keys
    r"|vault:v\d+:[A-Za-z0-9+/=]+"  # Transit ciphertext
    r"|\b[a-z]{2}\d-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f-]{8,}"  # HubSpot codes / refresh tokens
    r"|\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b"  # bare-UUID tokens
    r"|(?i:bearer)\s+[A-Za-z0-9._~+/=-]+"  # Authorization header values
    r"|\b[A-Za-z0-9_-]{64,}\b"  # any long opaque string: access tokens, secrets
)
_SECRET_PARAMS = re.compile(
    r"(?i)\b(code|state|token|access_token|refresh_token|client_secret|code_verifier)=[^&\s\"']+"
)


def redact_text(text: str) -> str:
    text = _SECRET_PARAMS.sub(lambda m: f"{m.group(1)}={REDACTED}", text)
    return _TOKEN_SHAPES.sub(REDACTED, text)


def _redact(value: Any, depth: int = 0) -> Any:
    if isinstance(value, str):
        return redact_text(value)
    if depth > 4:
        return value
    if isinstance(value, Mapping):
        return {
            k: REDACTED if str(k).lower() in _SECRET_FIELDS else _redact(v, depth + 1)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [_redact(v, depth + 1) for v in value]
    return value


def redact(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: mask secret fields and token-shaped values everywhere."""
    for name in list(event):
        if name.lower() in _SECRET_FIELDS:
            event[name] = REDACTED
        else:
            event[name] = _redact(event[name])
    return event


def _add_request_id(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    request_id = REQUEST_ID.get()
    if request_id is not None:
        event.setdefault("request_id", request_id)
    return event


def configure(level: str = "INFO", fmt: str = "json") -> None:
    """Route structlog and stdlib logging through the same processors to stderr."""
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        _add_request_id,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.stdlib.ExtraAdder(),
        structlog.processors.format_exc_info,
        redact,
    ]
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *shared[:1],
            structlog.stdlib.PositionalArgumentsFormatter(),
            *shared[1:],
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    # httpx logs full URLs at INFO; hvac/urllib3 log request lines at DEBUG.
    for name in ("httpx", "httpcore", "urllib3", "hpack"):
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))
