"""The install flow's pending state, sealed for its trip through Redis (DESIGN.md, "Security:
Install flow").

``/oauth/install`` keeps what the callback needs (app, PKCE verifier, browser nonce hash,
``return_to``, the link's portal) in Redis under the random ``state`` id. Redis is not
trusted with it: whoever can write there could null the verifier (no PKCE), point
``return_to`` anywhere, or change the app or portal. So the value is sealed::

    base64url(JSON payload) "." base64url(HMAC-SHA256(state key, state id "\\n" base64url(JSON)))

- The state key is derived from the deployment key under its own label (as install links
  derive theirs), so it never signs anything else, and Redis never holds it.
- The MAC covers the state id: a sealed value copied under another id does not open.
- It is checked in constant time before the payload is parsed; a value that does not open,
  or opens to a payload of the wrong shape, is refused (``install_state_tampered``) and
  nothing is exchanged.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
from dataclasses import asdict, dataclass, field

from broker.core.models import APP_SLUG
from broker.errors import InstallFailed

#: Its own label: the state key signs nothing else (fingerprints, sessions, links).
_LABEL = b"hubspot-token-broker/install-state/v1"
_FIELDS = {"app", "verifier", "nonce", "actor", "return_to", "hub_id"}


@dataclass(frozen=True, slots=True)
class PendingInstall:
    """What ``begin`` left for the callback. ``verifier`` is None only for a marketplace
    install (HubSpot sends no state and there is no PKCE), which is never sealed."""

    app: str
    actor: str
    verifier: str | None = field(default=None, repr=False)
    #: SHA-256 of the browser nonce set as a cookie by ``begin``.
    nonce: str = field(default="", repr=False)
    return_to: str | None = None
    #: A re-install link's portal: only this one may be connected.
    hub_id: int | None = None


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class StateSeal:
    """Seals and opens :class:`PendingInstall` values; pure (no I/O)."""

    def __init__(self, deployment_key: bytes) -> None:
        self._key = hmac.digest(deployment_key, _LABEL, "sha256")

    def seal(self, state: str, pending: PendingInstall) -> str:
        body = _b64(json.dumps(asdict(pending), separators=(",", ":"), sort_keys=True).encode())
        return f"{body}.{_b64(self._mac(state, body))}"

    def open(self, state: str, sealed: str) -> PendingInstall:
        """The pending install sealed under ``state``; else :class:`InstallFailed`
        ``install_state_tampered``."""
        tampered = InstallFailed(
            "this install's stored state was altered; nothing was stored, start again",
            code="install_state_tampered",
        )
        body, dot, signature = sealed.partition(".")
        try:
            presented = _unb64(signature)
        except (binascii.Error, ValueError):
            raise tampered from None
        if not dot or not hmac.compare_digest(presented, self._mac(state, body)):
            raise tampered
        try:
            data = json.loads(_unb64(body))
        except (binascii.Error, ValueError):
            raise tampered from None
        pending = _pending(data)
        if pending is None:
            raise tampered
        return pending

    def _mac(self, state: str, body: str) -> bytes:
        return hmac.digest(self._key, f"{state}\n{body}".encode(), "sha256")


def _pending(data: object) -> PendingInstall | None:
    """A well-formed payload of a flow ``begin`` started (so with a verifier), else None."""
    if not isinstance(data, dict) or set(data) != _FIELDS:
        return None
    app, actor, verifier, nonce = data["app"], data["actor"], data["verifier"], data["nonce"]
    return_to, hub_id = data["return_to"], data["hub_id"]
    if not (isinstance(app, str) and APP_SLUG.match(app)):
        return None
    if not all(isinstance(v, str) and v for v in (actor, verifier, nonce)):
        return None
    if return_to is not None and not isinstance(return_to, str):
        return None
    if hub_id is not None and type(hub_id) is not int:
        return None
    return PendingInstall(app, actor, verifier, nonce, return_to, hub_id)
