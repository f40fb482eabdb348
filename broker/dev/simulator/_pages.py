"""The few HTML pages the simulator serves: consent, authorize errors, gateway errors.

Every interpolated value goes through `html.escape`; the pages never contain a secret.
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

DECISION_PATH = "/oauth/authorize/decision"

_CLOUDFLARE_TITLES = {
    521: "Web server is down",
    522: "Connection timed out",
    523: "Origin is unreachable",
    524: "A timeout occurred",
}
_GATEWAY_TITLES = {
    502: "Bad Gateway",
    503: "Service Temporarily Unavailable",
    504: "Gateway Timeout",
}


def _document(title: str, body: str) -> str:
    return (
        "<!DOCTYPE html>\n<html><head><meta charset='utf-8'>"
        f"<title>{escape(title)}</title></head>\n<body>\n{body}\n</body></html>\n"
    )


def authorize_error(message: str) -> str:
    """HubSpot shows a UI page (not a redirect) when the authorize URL itself is wrong."""
    return _document(
        "HubSpot - Authorization error",
        f"<h1>Something went wrong</h1>\n<p class='error'>{escape(message)}</p>",
    )


def consent(
    *,
    request_id: str,
    app_name: str,
    scopes: Sequence[str],
    portals: Sequence[tuple[int, str]],
    selected_hub_id: int | None,
) -> str:
    """The install page: pick an account, then Connect or Deny (both POST back)."""
    options = "\n".join(
        f"<option value='{hub_id}'{' selected' if hub_id == selected_hub_id else ''}>"
        f"{escape(domain)} ({hub_id})</option>"
        for hub_id, domain in portals
    )
    scope_items = "\n".join(f"<li>{escape(scope)}</li>" for scope in scopes)
    form = (
        f"<form method='post' action='{DECISION_PATH}'>\n"
        f"<input type='hidden' name='request_id' value='{escape(request_id)}'>\n"
        f"<label>Account <select name='hub_id'>\n{options}\n</select></label>\n"
        "<button type='submit' name='decision' value='connect'>Connect app</button>\n"
        "<button type='submit' name='decision' value='deny'>Deny</button>\n"
        "</form>"
    )
    return _document(
        "HubSpot - Connect app",
        f"<h1>Connect {escape(app_name)} to your HubSpot account</h1>\n"
        f"<p>This app is requesting access to:</p>\n<ul>\n{scope_items}\n</ul>\n{form}",
    )


def gateway_error(status: int) -> str:
    """What a 5xx looks like when it comes from HubSpot's edge rather than its API."""
    if status in _CLOUDFLARE_TITLES:
        title = _CLOUDFLARE_TITLES[status]
        return _document(
            f"api.hubapi.com | {status}: {title}",
            f"<h1>Error code {status}</h1>\n<h2>{escape(title)}</h2>\n"
            "<p>Cloudflare Ray ID: simulated</p>",
        )
    title = _GATEWAY_TITLES.get(status, "Server Error")
    return (
        f"<html>\n<head><title>{status} {title}</title></head>\n<body>\n"
        f"<center><h1>{status} {title}</h1></center>\n<hr><center>cloudflare</center>\n"
        "</body>\n</html>\n"
    )
