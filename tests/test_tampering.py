"""Tampered storage: a ciphertext swapped between portals, truncated or garbage, in the
access or the refresh column → a clear error class, the portal flagged, nothing leaked,
everything else keeps working."""

from __future__ import annotations

import pytest

from tests.helpers import Deploy, Deployment, sql

A, B, C = 7_100_001, 7_100_002, 7_100_003


@pytest.fixture
def deployment(deploy: Deploy) -> Deployment:
    return deploy(installed=(A, B, C))


@pytest.mark.parametrize(
    "tamper",
    [
        "access_ct = (SELECT access_ct FROM portals WHERE hub_id = {other})",  # swapped
        "access_ct = substr(access_ct, 1, 40)",  # truncated
        "access_ct = 'vault:v1:' || repeat('A', 60)",  # garbage
        "refresh_ct = (SELECT refresh_ct FROM portals WHERE hub_id = {other}),"
        " access_expires_at = now() - interval '1 minute'",  # swapped refresh, token expired
    ],
    ids=["swapped", "truncated", "garbage", "swapped-refresh"],
)
def test_tampered_ciphertext_is_refused_and_flagged(deployment: Deployment, tamper: str) -> None:
    settings = deployment.settings
    sql(settings, f"UPDATE portals SET {tamper.format(other=A)} WHERE hub_id = {B}")
    response = deployment.token(B, min_ttl=0)
    assert response.status_code == 500, response.text
    assert response.json()["code"] == "token_undecryptable"
    assert "vault:" not in response.text
    [row] = sql(settings, f"SELECT last_error FROM portals WHERE hub_id = {B}")
    assert row["last_error"] == "token_undecryptable"
    events = sql(
        settings, f"SELECT type FROM events WHERE type = 'portal.flagged' AND hub_id = {B}"
    )
    assert len(events) == 1
    # Nothing else is affected: the other portals serve, the broker is healthy.
    assert deployment.token(A, min_ttl=0).status_code == 200
    assert deployment.token(C, min_ttl=0).status_code == 200
