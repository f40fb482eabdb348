"""Settings that name HA backends: Sentinel URLs, Vault node lists, and the lease budget they
imply. Parsing only; the behaviour is tested on real servers elsewhere (test_vault,
tests/chaos/k8s.py)."""

from __future__ import annotations

import json

import pytest

from broker.config import SentinelUrl, load_settings
from broker.errors import ConfigError

BASE = {
    "BROKER_DATABASE_URL": "postgresql://broker@pg-0:5432,pg-1:5432/broker"
    "?target_session_attrs=read-write",
    "BROKER_REDIS_URL": "redis://redis:6379/0",
    "BROKER_VAULT_ADDR": "https://vault:8200",
    "BROKER_VAULT_TOKEN": "s.token",
}


def test_sentinel_url_names_the_sentinels_the_master_and_the_database() -> None:
    url = "rediss+sentinel://user:p%40ss@s-0:26379,[::1]:26380/broker/3"
    parsed = SentinelUrl.parse(url)
    assert parsed is not None
    assert parsed.sentinels == (("s-0", 26379), ("::1", 26380))
    assert (parsed.master, parsed.db, parsed.tls) == ("broker", 3, True)
    assert (parsed.username, parsed.password) == ("user", "p@ss")
    assert "p@ss" not in repr(parsed)
    assert SentinelUrl.parse("redis://redis:6379/0") is None


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("redis+sentinel://s-0/broker", "host:port"),
        ("redis+sentinel://s-0:26379", "/MASTER"),
        ("redis+sentinel://s-0:26379/broker/zero", "/MASTER"),
        ("redis+sentinel://s-0:26379/broker?ssl_ca_certs=/ca.pem", "no query"),
    ],
)
def test_a_malformed_sentinel_url_is_refused_without_echoing_it(url: str, problem: str) -> None:
    with pytest.raises(ConfigError) as refused:
        load_settings({**BASE, "BROKER_REDIS_URL": url.replace("s-0", "secret-host")})
    text = "\n".join(refused.value.problems)
    assert problem in text
    assert "secret-host" not in text


def test_a_vault_node_list_is_checked_and_counted_in_the_lease_budget() -> None:
    nodes = "https://vault-0:8200, https://vault-1:8200,https://vault-2:8200"
    with pytest.raises(ConfigError) as short:
        load_settings({**BASE, "BROKER_VAULT_ADDR": nodes, "BROKER_LEASE_SECONDS": "30"})
    assert any("LEASE_SECONDS" in p for p in short.value.problems)  # 3 x 5 + 10 + 10 + 1 > 30
    settings = load_settings({**BASE, "BROKER_VAULT_ADDR": nodes, "BROKER_LEASE_SECONDS": "40"})
    assert settings.vault_addr_list == [
        "https://vault-0:8200",
        "https://vault-1:8200",
        "https://vault-2:8200",
    ]
    assert settings.refresh_budget_seconds == 3 * 5 + 10 + 2 * 5
    with pytest.raises(ConfigError):
        load_settings({**BASE, "BROKER_VAULT_ADDR": "https://vault-0:8200,vault-1:8200"})


@pytest.mark.parametrize("field", ["review_rate", "refetch_seconds"])
@pytest.mark.parametrize("value", [0, -1, "fast", True])
def test_issuer_rates_must_be_positive_numbers(field: str, value: object) -> None:
    """A review rate of 0 used to pass and divide by zero on the first throttled token."""
    issuer = {
        "issuer": "https://kubernetes.default.svc",
        "audience": "hubspot-token-broker",
        "tokenreview_url": "https://kubernetes.default.svc",
        field: value,
    }
    with pytest.raises(ConfigError) as refused:
        load_settings({**BASE, "BROKER_JWT_ISSUERS": json.dumps([issuer])})
    assert any(field in p for p in refused.value.problems)
