"""A real OpenID Provider for the SSO tests: panva's ``oidc-provider`` (OpenID Certified),
run by Node from ``tests/oidc_provider/`` over HTTPS on a free loopback port, with a CA of
its own (the broker trusts it through ``BROKER_CA_BUNDLE``) and two users:

- ``alice`` (``alice@example.com``), in the mapped group ``platform-admins``;
- ``bob`` (``bob@example.com``), only in ``everyone``, which maps to nothing.

``npm ci`` runs once per checkout (a marker keyed by the lockfile's hash; a file lock keeps
two xdist workers from installing at once). Each worker starts its own provider."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import ssl
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, urljoin, urlsplit

import httpx
import pytest

from tests.tls import CertificateAuthority

PROVIDER_DIR = Path(__file__).parent / "oidc_provider"
USERS = {
    "alice": {
        "password": "alice-pw",
        "email": "alice@example.com",
        "groups": ["platform-admins", "auditors"],
    },
    "bob": {"password": "bob-pw", "email": "bob@example.com", "groups": ["everyone"]},
}


@dataclass
class Idp:
    issuer: str
    ca: Path
    process: subprocess.Popen[bytes] = field(repr=False)

    def client(self) -> httpx.Client:
        """An HTTP client that trusts the IdP's CA (and no other)."""
        return httpx.Client(verify=ssl.create_default_context(cafile=str(self.ca)), timeout=15)

    def register(self, client_id: str, secret: str, redirect_uri: str) -> None:
        """A confidential web client (client_secret_basic) with one redirect URI."""
        with self.client() as http:
            answer = http.put(
                f"{self.issuer}/__test/clients/{client_id}",
                json={
                    "client_secret": secret,
                    "redirect_uris": [redirect_uri],
                    "grant_types": ["authorization_code"],
                    "response_types": ["code"],
                    "token_endpoint_auth_method": "client_secret_basic",
                },
            )
            assert answer.status_code == 204, answer.text

    def fault_id_token(self, **claims: object) -> None:
        """The next token response's ID token carries these claims, re-signed by the IdP."""
        with self.client() as http:
            assert http.post(f"{self.issuer}/__test/id-token", json=claims).status_code == 204

    def authorize(self, url: str, user: str, *, stop_at: str) -> str:
        """Sign ``user`` in at the IdP from the authorization URL ``url``, as a browser
        would; returns the URL the IdP then redirects to (starting with ``stop_at``),
        without following it."""
        with self.client() as browser:
            answer = browser.get(url)
            for _ in range(10):
                if answer.status_code in (302, 303):
                    target = urljoin(str(answer.url), answer.headers["location"])
                    if target.startswith(stop_at):
                        return target
                    answer = browser.get(target)
                    continue
                form = re.search(r'action="([^"]+/login)"', answer.text)
                assert answer.status_code == 200, answer.text
                assert form, answer.text
                answer = browser.post(
                    urljoin(str(answer.url), form.group(1)),
                    data={"login": user, "password": USERS[user]["password"]},
                )
        raise AssertionError("the IdP never redirected back")


def query(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}


def _npm_ci() -> None:
    lock = PROVIDER_DIR / "package-lock.json"
    digest = hashlib.sha256(lock.read_bytes()).hexdigest()
    marker = PROVIDER_DIR / "node_modules" / ".htb-installed"
    with open(PROVIDER_DIR / ".install.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        if marker.exists() and marker.read_text() == digest:
            return
        done = subprocess.run(
            ["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=PROVIDER_DIR,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert done.returncode == 0, f"npm ci failed:\n{done.stderr[-2000:]}"
        marker.write_text(digest)


def _announced(process: subprocess.Popen[bytes], timeout: float) -> str:
    """The issuer the provider prints once it listens; its stdout is drained after that."""
    found = threading.Event()
    issuer: list[str] = []

    def read() -> None:
        assert process.stdout is not None
        for raw in process.stdout:
            line = raw.decode(errors="replace").strip()
            if not issuer and line.startswith("{"):
                issuer.append(json.loads(line)["issuer"])
                found.set()

    threading.Thread(target=read, name="idp-stdout", daemon=True).start()
    found.wait(timeout)
    return issuer[0] if issuer else ""


@pytest.fixture(scope="session", name="idp")
def idp_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Idp]:
    if shutil.which("node") is None or shutil.which("npm") is None:
        if os.environ.get("CI"):
            pytest.fail("node and npm are missing under CI (Debian's nodejs and npm)")
        pytest.skip("Node.js and npm are not installed: the test OpenID Provider needs them")
    _npm_ci()
    workdir = tmp_path_factory.mktemp("idp")
    ca = CertificateAuthority.create(workdir, name="test IdP CA")
    ca.issue(workdir / "tls.crt", workdir / "tls.key", serial=7)
    config = workdir / "config.json"
    config.write_text(
        json.dumps(
            {"cert": str(workdir / "tls.crt"), "key": str(workdir / "tls.key"), "users": USERS}
        )
    )
    log = (workdir / "idp.log").open("wb")
    process = subprocess.Popen(
        ["node", str(PROVIDER_DIR / "server.mjs"), str(config)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=log,
    )
    try:
        issuer = _announced(process, 30)
        if not issuer:
            raise RuntimeError(f"the OpenID Provider did not start: {workdir / 'idp.log'}")
        yield Idp(issuer, ca.pem, process)
    finally:
        process.terminate()
        process.wait(10)
        if process.stdout is not None:
            process.stdout.close()
        log.close()
