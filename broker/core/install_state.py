"""The install flow's pending state, sealed for its trip through Redis (DESIGN.md, "Security:
Install flow").

``/oauth/install`` keeps what the callback needs (app, PKCE verifier, browser nonce hash,
``return_to``, the link's portal) in Redis under the random ``state`` id. Redis is not
trusted with it: whoever can write there could null the verifier (no PKCE), point
``return_to`` anywhere, or change the app or portal. So the value is sealed::

    base64url(JSON payload) "." MAC(state id "\n" base64url(JSON payload))

- The MAC is made by Vault under the session signing key (:mod:`broker.core.signing`: only
  replicas may sign with it, operators may not) with a label of its own, so it is never a
  valid session or CSRF token; it names its key version and rotates with that key.
- The MAC covers the state id: a sealed value copied under another id does not open.
- It is checked before the payload is parsed; a value that does not open, or opens to a
  payload of the wrong shape, is refused (``install_state_tampered``) and nothing is
  exchanged.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from broker.core.models import APP_SLUG
from broker.core.signing import Keyring, Purpose
from broker.errors import InstallFailed

#: Its own label under the session key: a state MAC is never a session's or a CSRF token's.
_LABEL = "install-state"
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


class StateSeal:
    """Seals and opens :class:`PendingInstall` values (one Vault call each)."""

    def __init__(self, keyring: Keyring) -> None:
        self._keyring = keyring

    async def seal(self, state: str, pending: PendingInstall) -> str:
        return await self._keyring.seal(Purpose.SESSION, _LABEL, asdict(pending), bound_to=state)

    async def open(self, state: str, sealed: str) -> PendingInstall:
        """The pending install sealed under ``state``; else :class:`InstallFailed`
        ``install_state_tampered``."""
        data = await self._keyring.open(Purpose.SESSION, _LABEL, sealed, bound_to=state)
        pending = None if data is None else _pending(data)
        if pending is None:
            raise InstallFailed(
                "this install's stored state was altered; nothing was stored, start again",
                code="install_state_tampered",
            )
        return pending


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
    if not destination_ok(return_to, hub_id):
        return None
    return PendingInstall(app, actor, verifier, nonce, return_to, hub_id)


def destination_ok(return_to: object, hub_id: object) -> bool:
    """Whether a sealed payload's ``return_to`` (a URL or None) and ``hub_id`` (the one portal
    it may connect, or None) have their types: install links and pending installs carry both."""
    return (return_to is None or isinstance(return_to, str)) and (
        hub_id is None or type(hub_id) is int
    )
