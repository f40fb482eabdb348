"""The page's GET parameters, strictly parsed (a 422 that names the parameter, never
repeating what was sent), and the ``back`` field that returns an action to the page,
filters and all, that it came from."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qsl, urlencode, urlsplit

from starlette.datastructures import QueryParams
from starlette.requests import Request

from broker.core.models import APP_SLUG, PortalKey, PortalState
from broker.core.ports import TimelineCursor
from broker.errors import InvalidRequest
from broker.web.params import parse_app, parse_int

_PORTAL_TEXT = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}/[1-9][0-9]{0,18}(/user/[1-9][0-9]{0,18})?\Z")
#: A Hub ID prefix or a piece of a hub domain: letters, digits, dots and dashes.
_SEARCH = re.compile(r"[a-z0-9.-]{1,100}\Z")
# At most 17 digits of microseconds (past the year 5000) and an 18-digit event id: every
# cursor the pattern admits is a real time and a bigint.
_TIMELINE_CURSOR = re.compile(r"([0-9]{1,17})\.([ae])([1-9][0-9]{0,17})\Z")
_PAGE = re.compile(r"(after|before):(.+)\Z", re.DOTALL)
_BACK_PATH = re.compile(r"/admin(/portals/[1-9][0-9]{0,18})?\Z")
#: ``done`` -> what the message after an action says after "Portal <key>".
FLASH = {
    "revoked": "is revoked, here and at HubSpot.",
    "revoke_pending": "is revoked here; HubSpot did not answer, so the broker keeps "
    "retrying the revoke there in the background.",
    "already_revoked": "was already revoked.",
    "quarantined": "is quarantined: no token is served until it is released.",
    "released": "is released and serves tokens again.",
}
PAGE_SIZES = (10, 25, 50, 100, 200)
DEFAULT_SIZE = 50


def invalid(name: str, message: str) -> InvalidRequest:
    return InvalidRequest(f"{name} {message}", errors=[{"field": name, "message": message}])


def _given(query: QueryParams, name: str) -> str | None:
    """A parameter's value; an empty one (a search form's blank field) counts as absent."""
    return query.get(name) or None


def portal_key(raw: str | None, name: str) -> PortalKey | None:
    if raw is None:
        return None
    if not _PORTAL_TEXT.match(raw):
        raise invalid(name, "must be a portal key like demo/12345")
    return PortalKey.parse(raw)


def path_key(request: Request, default_app: str, app: str | None, user_id: str | None) -> PortalKey:
    """The portal of ``/admin/portals/{hub_id}...``, given its ``app`` and ``user_id``."""
    return PortalKey(
        parse_app(app, default_app),
        parse_int(request.path_params["hub_id"], "hub_id") or 0,
        parse_int(user_id, "user_id"),
    )


@dataclass(frozen=True, slots=True)
class PageCursor:
    """``page=after:<portal key>`` (the page after that portal) or ``before:<portal key>``:
    one parameter, so a link cannot name two cursors at once."""

    before: bool
    key: PortalKey

    def __str__(self) -> str:
        return f"{'before' if self.before else 'after'}:{self.key}"


def page_cursor(raw: str | None) -> PageCursor | None:
    if raw is None:
        return None
    found = _PAGE.match(raw)
    if found is None or not _PORTAL_TEXT.match(found.group(2)):
        raise invalid("page", "must be after:<portal key> or before:<portal key>")
    return PageCursor(found.group(1) == "before", PortalKey.parse(found.group(2)))


@dataclass(frozen=True, slots=True)
class Flash:
    """The message after an action: a fixed sentence per code, naming a well-formed key, so
    a crafted link cannot put words of its own on the page."""

    portal: str
    message: str


def flash(query: QueryParams) -> Flash | None:
    done, portal = query.get("done"), portal_key(query.get("portal"), "portal")
    if done is None:
        return None
    if done not in FLASH:
        raise invalid("done", f"must be one of {', '.join(FLASH)}")
    return Flash("" if portal is None else str(portal), FLASH[done])


def page_size(query: QueryParams) -> int:
    size = parse_int(_given(query, "size"), "size") or DEFAULT_SIZE
    if size not in PAGE_SIZES:
        raise invalid("size", f"must be one of {', '.join(map(str, PAGE_SIZES))}")
    return size


@dataclass(frozen=True, slots=True)
class Filters:
    """The list's search, filters and page size, as they go back into links."""

    text: str | None = None
    state: PortalState | None = None
    app: str | None = None
    size: int = DEFAULT_SIZE

    @classmethod
    def parse(cls, query: QueryParams) -> Filters:
        text = _given(query, "q")
        if text is not None:
            text = text.strip().lower()
            if not _SEARCH.match(text):
                raise invalid(
                    "q", "must be a Hub ID or part of a hub domain (1-100 of a-z 0-9 . -)"
                )
        state = _given(query, "state")
        if state is not None and state not in {s.value for s in PortalState}:
            raise invalid("state", f"must be one of {', '.join(PortalState)}")
        app = _given(query, "app")
        if app is not None and not APP_SLUG.match(app):
            raise invalid("app", "must be an app slug: 1-63 lowercase letters, digits or '-'")
        return cls(text, None if state is None else PortalState(state), app, page_size(query))

    def url(self, **changes: str | None) -> str:
        """``/admin`` with these filters, ``changes`` applied (``None`` drops a parameter)."""
        params: dict[str, str | None] = {
            "q": self.text,
            "state": None if self.state is None else self.state.value,
            "app": self.app,
            "size": None if self.size == DEFAULT_SIZE else str(self.size),
        }
        params.update(changes)
        kept = {k: v for k, v in params.items() if v is not None}
        return f"/admin?{urlencode(kept)}" if kept else "/admin"


def timeline_cursor(raw: str | None) -> TimelineCursor | None:
    """``<microseconds since the epoch>.<a|e><event id>`` (``a``: an audit event, ``e``: an
    outbox event), as :func:`cursor_text` writes it."""
    if raw is None:
        return None
    found = _TIMELINE_CURSOR.match(raw)
    if found is None:
        raise invalid("before", "must be a timeline cursor from this page's links")
    micros = int(found.group(1))
    at = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=micros)
    return TimelineCursor(at, found.group(2) == "e", int(found.group(3)))


def cursor_text(cursor: TimelineCursor) -> str:
    delta = cursor.at - datetime(1970, 1, 1, tzinfo=UTC)
    micros = (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
    return f"{micros}.{'e' if cursor.outbox else 'a'}{cursor.id}"


def back_to(raw: str | None, done: str, key: PortalKey) -> str:
    """Where an action returns: the list or portal page it was sent from (``back``, a path
    and query of this page only, never another site), with the message after the action."""
    path, pairs = "/admin", []
    if raw:
        parts = urlsplit(raw)
        if (
            len(raw) > 2000
            or parts.scheme
            or parts.netloc
            or parts.fragment
            or not _BACK_PATH.match(parts.path)
        ):
            raise invalid("back", "must be a page of the operator page")
        try:
            pairs = parse_qsl(parts.query, strict_parsing=bool(parts.query), max_num_fields=20)
        except ValueError as exc:
            raise invalid("back", "must be a page of the operator page") from exc
        path = parts.path
    kept = [(k, v) for k, v in pairs if k not in ("done", "portal")]
    return f"{path}?{urlencode([*kept, ('done', done), ('portal', str(key))])}"
