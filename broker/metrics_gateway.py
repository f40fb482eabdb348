"""The HubSpot gateway's and the per-portal budgets' metrics (kept beside
:mod:`broker.metrics`, same rules: bounded labels, an ``app`` slug at most, never a hub_id,
a caller name or a token)."""

from __future__ import annotations

from enum import StrEnum

from prometheus_client import Counter, Gauge, Histogram

#: Apps with their own budget gauge children (the rest are not shown, never unbounded).
BUDGET_MAX_APPS = 100


class Outcome(StrEnum):
    """``outcome`` of :data:`HUBSPOT_429S`: a 429 the gateway answered itself instead of
    sending the request (avoided), or one HubSpot sent (received)."""

    AVOIDED = "avoided"
    RECEIVED = "received"


class Store(StrEnum):
    """``store`` of :data:`BUDGET_TAKES`: where the budget was counted."""

    REDIS = "redis"
    LOCAL = "local"  # Redis unreachable: this replica's share only


GATEWAY_REQUESTS = Counter(
    "broker_gateway_requests_total",
    "Requests forwarded to HubSpot by the gateway, by HubSpot's status class.",
    ["status"],  # 2xx | 3xx | 4xx | 5xx
)
GATEWAY_RETRIED_401 = Counter(
    "broker_gateway_retried_401_total",
    "Requests sent again with a newer token after HubSpot answered 401 to the one sent.",
)
GATEWAY_SECONDS = Histogram(
    "broker_gateway_upstream_seconds",
    "Seconds from sending a gateway request to HubSpot until its answer's headers.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
HUBSPOT_429S = Counter(
    "broker_gateway_hubspot_429_total",
    "HubSpot 429s on gateway requests: avoided (the gateway answered 429 itself, nothing "
    "sent) or received (HubSpot answered 429).",
    ["outcome"],
)
HUBSPOT_429_AVOIDED = HUBSPOT_429S.labels(Outcome.AVOIDED)
HUBSPOT_429_RECEIVED = HUBSPOT_429S.labels(Outcome.RECEIVED)
QUEUED = Gauge(
    "broker_gateway_queued_requests",
    "Gateway requests waiting for their portal's budget on this replica.",
)
QUEUE_SECONDS = Histogram(
    "broker_gateway_queue_seconds",
    "Seconds a gateway request waited for its portal's budget (0 when it had some at once).",
    buckets=(0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 3, 5, 7.5, 10, 15, 30),
)
BUDGET_TAKES = Counter(
    "broker_budget_takes_total",
    "Units of portal budget taken (gateway requests and usage reported by token-route "
    "callers), by where they were counted.",
    ["store"],
)
BUDGET_USED = Gauge(
    "broker_budget_used_ratio",
    "Share of a portal's ten-secondly budget in use, highest among the app's portals this "
    f"replica used within the window. app: an app slug (at most {BUDGET_MAX_APPS} apps).",
    ["app"],
)
BUDGET_LEFT = Gauge(
    "broker_budget_left",
    "Requests left in the ten-secondly window of the app's portal this replica last took "
    f"budget for. app: an app slug (at most {BUDGET_MAX_APPS} apps).",
    ["app"],
)
