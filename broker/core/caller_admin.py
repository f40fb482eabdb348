"""Creating callers, rotating their keys and disabling them (the management API and the
CLI), as :class:`CallerAdmin`, which :class:`~broker.core.callers.CallerService` extends with
authentication. Every change is published through
:class:`~broker.core.invalidation.Invalidations`, so every replica forgets the caller."""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Iterable
from datetime import datetime

from broker.core.invalidation import Invalidations
from broker.core.models import Caller, NewCallerKey, Role
from broker.core.ports import AuditSink, CallerRepository
from broker.errors import Forbidden, InvalidRequest, NotFound

KEY_PREFIX = "hsb_"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
#: A HubSpot path prefix a caller may be granted: absolute, no query, no dot segments.
_SEGMENT = r"[A-Za-z0-9_~:@!$&'()*+,;=-][A-Za-z0-9._~:@!$&'()*+,;=-]*"
_HUBSPOT_PATH_RE = re.compile(rf"^/(?:{_SEGMENT}/)*(?:{_SEGMENT})?$")
_HUBSPOT_PATHS_MAX = 50


def hash_secret(secret: str) -> str:
    """What is stored of a key's secret (keys are 256-bit random: a plain hash is enough)."""
    return hashlib.sha256(secret.encode()).hexdigest()


class CallerAdmin:
    _callers: CallerRepository
    _audit: AuditSink
    _invalidations: Invalidations

    async def create(
        self,
        name: str,
        *,
        roles: Iterable[str] = (Role.TOKENS_READ.value,),
        apps: Iterable[str] | None = None,
        hub_ids: Iterable[int] | None = None,
        expires_at: datetime | None = None,
        rate_limit: float | None = None,
        identity: tuple[str, str] | None = None,
        with_key: bool = True,
        actor: str,
        granter: Caller | None = None,
    ) -> NewCallerKey:
        """``granter``: the caller asking (the management API), which may grant nothing it
        lacks (:meth:`Caller.covers`); None for the local CLI (bootstrap, break-glass)."""
        if not _NAME_RE.match(name):
            raise InvalidRequest(
                "caller names are 1-128 letters, digits, '.', '_', ':' or '-'",
                errors=[{"field": "name", "message": "invalid"}],
            )
        role_set = frozenset(roles)
        unknown = role_set - {r.value for r in Role}
        if unknown:
            raise InvalidRequest(f"unknown roles: {', '.join(sorted(unknown))}")
        key_id = secrets.token_hex(8)
        secret = secrets.token_urlsafe(32)
        draft = Caller(
            id=0,
            name=name,
            roles=role_set,
            apps=None if apps is None else frozenset(apps),
            hub_ids=None if hub_ids is None else frozenset(hub_ids),
            expires_at=expires_at,
            rate_limit=rate_limit,
        )
        if not with_key and identity is None:
            raise InvalidRequest("a caller needs a key or a workload identity")
        if granter is not None and not granter.covers(draft):
            raise Forbidden(
                f"caller {granter.name!r} may not create a caller with roles, apps, hubs or "
                "an expiry beyond its own"
            )
        caller = await self._callers.create(
            draft,
            key_id if with_key else None,
            hash_secret(secret) if with_key else None,
            expires_at,
            identity,
        )
        # A new caller: every replica forgets the key ids it found unknown (the new id
        # cannot be among them but for a 2**-64 chance per probe; cheap to be sure).
        await self._invalidations.publish_caller(caller.id)
        self._audit.record("caller.created", actor=actor, caller=name, roles=sorted(role_set))
        shown = f"{KEY_PREFIX}{key_id}_{secret}" if with_key else ""
        return NewCallerKey(caller, key_id, shown, expires_at)

    async def get(self, name: str, *, granter: Caller | None = None) -> Caller:
        """The caller ``name``, only if ``granter`` (when given) covers it: rotating a key
        hands the new key out, so managing a wider caller would be taking it over."""
        caller = await self._callers.by_name(name)
        if caller is None:
            raise NotFound(f"no caller named {name!r}", code="caller_not_found")
        if granter is not None and not granter.covers(caller):
            raise Forbidden(
                f"caller {granter.name!r} may not manage caller {name!r}, which has roles, "
                "apps, hubs or an expiry beyond its own"
            )
        return caller

    async def rotate(
        self, name: str, *, overlap_seconds: float, actor: str, granter: Caller | None = None
    ) -> NewCallerKey:
        """A new key for ``name``; the old one keeps working for ``overlap_seconds``."""
        if not 0 <= overlap_seconds <= 30 * 86400:
            raise InvalidRequest("the overlap must be between 0 and 30 days")
        if granter is not None:
            await self.get(name, granter=granter)
        key_id = secrets.token_hex(8)
        secret = secrets.token_urlsafe(32)
        caller = await self._callers.rotate_key(name, key_id, hash_secret(secret), overlap_seconds)
        if caller is None:
            raise NotFound(f"no enabled caller named {name!r}", code="caller_not_found")
        # Every replica looks the caller up again: the new key at once, the old one (now the
        # previous key) until its overlap ends.
        await self._invalidations.publish_caller(caller.id)
        self._audit.record(
            "caller.key_rotated", actor=actor, caller=name, overlap_seconds=overlap_seconds
        )
        return NewCallerKey(caller, key_id, f"{KEY_PREFIX}{key_id}_{secret}", caller.expires_at)

    async def list(self) -> list[Caller]:
        return await self._callers.list()

    async def set_gateway(
        self,
        name: str,
        *,
        hubspot_paths: Iterable[str],
        gateway_weight: int = 1,
        actor: str,
        granter: Caller | None = None,
    ) -> Caller:
        """What ``name`` may call through the HubSpot gateway (path prefixes; ``/``: every
        path) and its weight in a portal's budget queue. A ``granter`` grants only prefixes
        it may call itself."""
        paths = frozenset(hubspot_paths)
        bad = sorted(p for p in paths if len(p) > 200 or not _HUBSPOT_PATH_RE.match(p))
        if bad or len(paths) > _HUBSPOT_PATHS_MAX:
            raise InvalidRequest(
                f"hubspot_paths are at most {_HUBSPOT_PATHS_MAX} absolute paths such as "
                "/crm/v3/objects/ (no query, no '.' or '..' segments)",
                errors=[{"field": "hubspot_paths", "message": "invalid"}],
            )
        if not 1 <= gateway_weight <= 100:
            raise InvalidRequest(
                "gateway_weight must be between 1 and 100",
                errors=[{"field": "gateway_weight", "message": "out of range"}],
            )
        if granter is not None:
            await self.get(name, granter=granter)
            if not all(granter.may_call(path) for path in paths):
                raise Forbidden(f"caller {granter.name!r} may not grant HubSpot paths it lacks")
        caller = await self._callers.set_gateway(name, paths, gateway_weight)
        if caller is None:
            raise NotFound(f"no caller named {name!r}", code="caller_not_found")
        await self._invalidations.publish_caller(caller.id)
        self._audit.record(
            "caller.gateway_set",
            actor=actor,
            caller=name,
            hubspot_paths=sorted(paths),
            gateway_weight=gateway_weight,
        )
        return caller

    async def disable(self, name: str, *, actor: str, granter: Caller | None = None) -> None:
        if granter is not None:
            await self.get(name, granter=granter)
        caller_id = await self._callers.disable(name)
        if caller_id is None:
            raise NotFound(f"no enabled caller named {name!r}", code="caller_not_found")
        await self._invalidations.publish_caller(caller_id)
        self._audit.record("caller.disabled", actor=actor, caller=name)
