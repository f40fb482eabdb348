"""The operator page's single sign-on settings (``BROKER_OIDC_*``): their checks and the
group -> roles mapping, kept out of :mod:`broker.config` so that module stays one concept.

``BROKER_OIDC_ROLES=platform-admins=portals:admin+callers:admin,support=portals:admin``
names, per identity-provider group, the roles its members get on the operator page;
``BROKER_OIDC_APPS=support=demo+billing`` limits a group to some apps (a group not named
there: every app). A person in several groups gets the union of their roles; the apps they
may act on are those of their groups that grant ``portals:admin`` (every app if any of
those is unlimited): a group granting something else never widens that grant.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from broker.core.models import APP_SLUG, Role

if TYPE_CHECKING:
    from broker.config import Settings

PREFIX = "BROKER_OIDC_"


@dataclass(frozen=True, slots=True)
class GroupGrant:
    """What membership of one group grants: roles, and the apps (None: every app)."""

    roles: frozenset[str]
    apps: frozenset[str] | None = None


def _pairs(text: str, what: str) -> dict[str, list[str]]:
    """``group=a+b,group2=c`` -> {group: [a, b], group2: [c]}; ValueError names the fault."""
    found: dict[str, list[str]] = {}
    for entry in (e.strip() for e in text.split(",")):
        if not entry:
            continue
        group, sep, values = entry.rpartition("=")
        items = [v.strip() for v in values.split("+") if v.strip()]
        if not sep or not group.strip() or not items:
            raise ValueError(f"each entry must be GROUP={what}[+{what}...], got {entry!r}")
        if group.strip() in found:
            raise ValueError(f"group {group.strip()!r} is named twice")
        found[group.strip()] = items
    return found


def group_grants(roles: str, apps: str) -> dict[str, GroupGrant]:
    """The mapping of ``BROKER_OIDC_ROLES`` and ``BROKER_OIDC_APPS``; ValueError names
    what is wrong (the setting's name first)."""
    try:
        by_group = _pairs(roles, "ROLE")
    except ValueError as exc:
        raise ValueError(f"{PREFIX}ROLES: {exc}") from None
    known = {r.value for r in Role}
    for group, names in by_group.items():
        unknown = sorted(set(names) - known)
        if unknown:
            raise ValueError(
                f"{PREFIX}ROLES: group {group!r}: unknown role(s) {', '.join(unknown)} "
                f"(known: {', '.join(sorted(known))})"
            )
    try:
        apps_by_group = _pairs(apps, "APP")
    except ValueError as exc:
        raise ValueError(f"{PREFIX}APPS: {exc}") from None
    for group, slugs in apps_by_group.items():
        if group not in by_group:
            raise ValueError(f"{PREFIX}APPS: group {group!r} is not in {PREFIX}ROLES")
        if any(not APP_SLUG.match(s) for s in slugs):
            raise ValueError(f"{PREFIX}APPS: group {group!r}: app slugs are a-z, 0-9 and -")
    return {
        group: GroupGrant(
            frozenset(names),
            frozenset(apps_by_group[group]) if group in apps_by_group else None,
        )
        for group, names in by_group.items()
    }


def _loopback(host: str | None) -> bool:
    if host == "localhost":
        return True
    try:
        return host is not None and ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _url_problem(url: str) -> str | None:
    """Why ``url`` cannot be an issuer or redirect URI: https (http only on loopback)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.fragment:
        return "must be an https URL"
    if parts.scheme == "http" and not _loopback(parts.hostname):
        return "must be https (http only for a loopback address)"
    return None


def problems(settings: Settings) -> list[str]:
    """Every problem with the SSO settings (none when SSO is off and nothing is set)."""
    found: list[str] = []
    others = [
        settings.oidc_client_id,
        settings.oidc_client_secret.get(),
        settings.oidc_redirect_uri,
        settings.oidc_roles,
        settings.oidc_apps,
    ]
    if not settings.oidc_issuer:
        if any(others):
            found.append(f"{PREFIX}ISSUER: required when other {PREFIX}* settings are set")
        return found
    issuer = _url_problem(settings.oidc_issuer)
    if issuer or urlsplit(settings.oidc_issuer).query:
        found.append(f"{PREFIX}ISSUER: {issuer or 'must have no query'}")
    if not settings.oidc_client_id:
        found.append(f"{PREFIX}CLIENT_ID: required with {PREFIX}ISSUER")
    if not settings.oidc_client_secret:
        found.append(f"{PREFIX}CLIENT_SECRET: required with {PREFIX}ISSUER (or _FILE)")
    if settings.oidc_redirect_uri:
        redirect = _url_problem(settings.oidc_redirect_uri)
        if redirect:
            found.append(f"{PREFIX}REDIRECT_URI: {redirect}")
        elif urlsplit(settings.oidc_redirect_uri).path != "/admin/oidc/callback":
            found.append(f"{PREFIX}REDIRECT_URI: its path must be /admin/oidc/callback")
    if "openid" not in settings.oidc_scopes.split():
        found.append(f"{PREFIX}SCOPES: must include openid")
    if not settings.oidc_groups_claim.strip():
        found.append(f"{PREFIX}GROUPS_CLAIM: must name the ID token claim that lists groups")
    try:
        if not group_grants(settings.oidc_roles, settings.oidc_apps):
            found.append(f"{PREFIX}ROLES: required with {PREFIX}ISSUER (GROUP=ROLE[+ROLE])")
    except ValueError as exc:
        found.append(str(exc))
    return found


def grants_of(settings: Settings) -> Mapping[str, GroupGrant]:
    """The validated mapping (``load_settings`` refused a malformed one)."""
    return group_grants(settings.oidc_roles, settings.oidc_apps)
