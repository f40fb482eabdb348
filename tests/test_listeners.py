"""The deployed shape on real ``broker serve`` processes: the public listener serves only the
install flow, the internal one everything else; the broker's own TLS, with its certificate
rotated in place while it serves; and the operator page and install flow behind a real
TLS-terminating proxy (Debian's nginx), where every cookie is ``Secure`` and forwarded
headers are believed only from the trusted proxy."""

from __future__ import annotations

import os
import re
import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest

from broker.config import load_settings
from broker.core.models import Role
from broker.dev.simulator import Simulator
from broker.dev.stack._processes import die_with_parent
from broker.server import CERT_CHECK_SECONDS
from tests.chaos.cluster import Replica, free_port, start_replica
from tests.helpers import Deployment, install_link, register
from tests.tls import CertificateAuthority, replace_file

HUB = 1_500_001
ADMIN = (Role.TOKENS_READ.value, Role.PORTALS_ADMIN.value)


@pytest.fixture
def two_listeners(
    env: dict[str, str], tmp_path: Path
) -> Iterator[tuple[Replica, str, dict[str, str]]]:
    """A replica with a public listener; yields it, the public URL and its environment."""
    public_port = free_port()
    replica_env = {**env, "BROKER_PUBLIC_PORT": str(public_port)}
    replica = start_replica(replica_env, tmp_path / "replica.log")
    try:
        yield replica, f"http://127.0.0.1:{public_port}", replica_env
    finally:
        replica.terminate()


def test_public_listener_serves_only_the_install_flow(
    two_listeners: tuple[Replica, str, dict[str, str]], sim: Simulator, sim_url: str
) -> None:
    replica, public, replica_env = two_listeners
    settings = load_settings(replica_env)
    client_id, secret, key = register(settings, sim, f"{public}/oauth/callback", slug="demo")
    auth = {"Authorization": f"Bearer {key}"}

    for path in ("/v1/portals/1/token", "/v1/portals", "/admin", "/admin/login", "/metrics"):
        answer = httpx.get(f"{public}{path}", headers=auth)
        assert answer.status_code == 404, (path, answer.text)
        assert answer.json()["code"] == "route_not_found"
    for path in ("/readyz", "/livez"):
        assert httpx.get(f"{public}{path}").status_code == 404
    # ... and the internal listener serves them (the install flow lives on the public one).
    assert httpx.get(f"{replica.url}/metrics").status_code == 200
    assert httpx.get(f"{replica.url}/readyz").status_code == 200
    assert httpx.get(f"{replica.url}/admin/login").status_code == 200
    assert httpx.get(f"{replica.url}/v1/portals/1/token").status_code == 401
    assert httpx.get(f"{replica.url}/oauth/install?app=demo").status_code == 404
    bare = httpx.get(f"{public}/oauth/install?app=demo", headers={"Accept": "application/json"})
    assert bare.json()["code"] == "install_link_required"

    # A whole install through the public listener; its token through the internal one.
    d = Deployment(settings, sim, sim_url, replica.url, "demo", client_id, secret, key)
    link = install_link(settings, "demo")
    assert link.startswith(f"{public}/oauth/install?")  # minted for the public address
    sim.add_portal(HUB)
    assert d.install(HUB).status_code == 200
    token = d.token(HUB)
    assert token.status_code == 200, token.text


def _peer_serial(port: int, ca: Path, *, sni: bool = True) -> int:
    context = ssl.create_default_context(cafile=str(ca))
    context.check_hostname = sni
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="localhost" if sni else None) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    from cryptography import x509

    return x509.load_der_x509_certificate(der).serial_number


def test_tls_on_both_listeners_and_a_certificate_rotated_in_place(
    env: dict[str, str], tmp_path: Path
) -> None:
    ca = CertificateAuthority.create(tmp_path / "pki")
    cert, key = tmp_path / "pki" / "tls.crt", tmp_path / "pki" / "tls.key"
    ca.issue(cert, key, serial=1001)
    public_port = free_port()
    replica = start_replica(
        {
            **env,
            "BROKER_PUBLIC_PORT": str(public_port),
            "BROKER_TLS_CERT_FILE": str(cert),
            "BROKER_TLS_KEY_FILE": str(key),
        },
        tmp_path / "replica.log",
    )
    try:
        assert replica.url.startswith("https://")
        internal_port = int(replica.url.rsplit(":", 1)[1])
        ready = httpx.get(f"{replica.url}/readyz", verify=ssl.create_default_context(cafile=ca.pem))
        assert ready.status_code == 200, ready.text
        with pytest.raises(httpx.ConnectError):  # not plain HTTP, and not an unknown CA
            httpx.get(f"{replica.url}/readyz")
        assert _peer_serial(internal_port, ca.pem) == 1001
        assert _peer_serial(public_port, ca.pem) == 1001

        # A rotation caught half-way: the new certificate is there, its key not yet. The
        # broker looks at the files meanwhile and must keep serving the old pair whole.
        new_cert, new_key = ca.pair(serial=2002)
        replace_file(cert, new_cert)
        time.sleep(CERT_CHECK_SECONDS * 1.5)
        assert _peer_serial(internal_port, ca.pem) == 1001
        assert _peer_serial(public_port, ca.pem) == 1001
        replace_file(key, new_key)
        deadline = time.monotonic() + 15
        while _peer_serial(internal_port, ca.pem) != 2002:
            assert time.monotonic() < deadline, "the new certificate was never served"
            time.sleep(0.5)
        assert _peer_serial(public_port, ca.pem) == 2002
        assert _peer_serial(public_port, ca.pem, sni=False) == 2002  # without a server name
        again = httpx.get(f"{replica.url}/readyz", verify=ssl.create_default_context(cafile=ca.pem))
        assert again.status_code == 200
    finally:
        replica.terminate()
    log = (tmp_path / "replica.log").read_text()
    assert "tls.reload_failed" in log  # the half-way pair was tried and refused
    assert "tls.reloaded" in log


# --- behind a TLS-terminating proxy ------------------------------------------------------------

_NGINX_CONF = """
daemon off;
master_process off;
pid {dir}/nginx.pid;
error_log {dir}/error.log info;
events {{ worker_connections 256; }}
http {{
    access_log {dir}/access.log;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    server {{
        listen 127.0.0.1:{port} ssl;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        proxy_set_header Host $http_host;
        proxy_set_header X-Forwarded-Proto $scheme;
        proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        location /oauth/ {{ proxy_pass http://127.0.0.1:{public}; }}
        location / {{ proxy_pass http://127.0.0.1:{internal}; }}
    }}
}}
"""


def _nginx() -> str:
    found = shutil.which("nginx") or (
        "/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None
    )
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("nginx is missing under CI (.ci/run installs Debian's nginx)")
        pytest.skip("nginx not installed (apt-get install nginx)")
    return found


@pytest.fixture
def behind_nginx(
    env: dict[str, str], tmp_path: Path
) -> Iterator[tuple[Replica, str, dict[str, str], CertificateAuthority]]:
    """A replica with both listeners behind nginx terminating TLS; yields the replica, the
    proxy's https URL, the replica's environment and the CA that signed the proxy."""
    binary = _nginx()
    ca = CertificateAuthority.create(tmp_path / "pki")
    cert, key = tmp_path / "pki" / "proxy.crt", tmp_path / "pki" / "proxy.key"
    ca.issue(cert, key, serial=7)
    public_port = free_port()
    replica_env = {
        **env,
        "BROKER_PUBLIC_PORT": str(public_port),
        "BROKER_TRUSTED_PROXIES": "127.0.0.1/32",
    }
    with ExitStack() as started:
        replica = start_replica(replica_env, tmp_path / "replica.log")
        started.callback(replica.terminate)
        internal_port = int(replica.url.rsplit(":", 1)[1])
        proxy_port = free_port()
        workdir = tmp_path / "nginx"
        workdir.mkdir()
        conf = workdir / "nginx.conf"
        conf.write_text(
            _NGINX_CONF.format(
                dir=workdir,
                port=proxy_port,
                cert=cert,
                key=key,
                public=public_port,
                internal=internal_port,
            )
        )
        nginx = subprocess.Popen(
            [binary, "-p", str(workdir), "-c", str(conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent(),
        )
        started.callback(nginx.wait, 10)
        started.callback(nginx.terminate)
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", proxy_port), timeout=1).close()
                break
            except OSError:
                assert nginx.poll() is None, (workdir / "error.log").read_text()
                assert time.monotonic() < deadline, "nginx did not listen"
                time.sleep(0.05)
        yield replica, f"https://127.0.0.1:{proxy_port}", replica_env, ca


def _set_cookies(response: httpx.Response) -> list[str]:
    return [v for k, v in response.headers.multi_items() if k == "set-cookie"]


def test_admin_login_and_install_flow_through_a_tls_terminating_proxy(
    behind_nginx: tuple[Replica, str, dict[str, str], CertificateAuthority],
    sim: Simulator,
    sim_url: str,
) -> None:
    replica, proxy, replica_env, ca = behind_nginx
    settings = load_settings(replica_env)
    client_id, secret, key = register(
        settings, sim, f"{proxy}/oauth/callback", slug="demo", roles=ADMIN
    )
    verify = ssl.create_default_context(cafile=ca.pem)
    cookies: list[str] = []

    # The install flow: link -> HubSpot's consent (the simulator) -> callback, via the proxy.
    link = install_link(settings, "demo")
    assert link.startswith(f"{proxy}/oauth/install?")
    sim.add_portal(HUB)
    sim.configure(consent="auto", consent_hub_id=HUB)
    with httpx.Client(verify=verify, follow_redirects=True, timeout=30) as browser:
        installed = browser.get(link)
        assert installed.status_code == 200, installed.text
        cookies += [c for r in [*installed.history, installed] for c in _set_cookies(r)]
    d = Deployment(settings, sim, sim_url, replica.url, "demo", client_id, secret, key)
    assert d.token(HUB).status_code == 200

    # The operator page: the login form's Origin check passes for the proxy's https origin.
    with httpx.Client(base_url=proxy, verify=verify, timeout=30) as browser:
        assert browser.get("/admin/login").status_code == 200
        logged_in = browser.post("/admin/login", data={"key": key}, headers={"Origin": proxy})
        assert logged_in.status_code == 303, logged_in.text
        cookies += _set_cookies(logged_in)
        page = browser.get("/admin")
        assert page.status_code == 200
        assert f'id="portal-demo-{HUB}"' in page.text
        csrf = re.search(r'name="csrf" value="([^"]+)"', page.text)
        assert csrf is not None
        out = browser.post("/admin/logout", data={"csrf": csrf.group(1)}, headers={"Origin": proxy})
        assert out.status_code == 303, out.text
        cookies += _set_cookies(out)

    names = {c.split("=", 1)[0] for c in cookies}
    assert {"htb_install", "htb_admin"} <= names, cookies
    insecure = [c for c in cookies if "secure" not in c.lower().split("; ")]
    assert insecure == [], insecure


def test_forwarded_headers_are_ignored_from_anyone_but_a_trusted_proxy(
    env: dict[str, str], sim: Simulator, tmp_path: Path
) -> None:
    """Trusted proxies are 10.0.0.0/8 here: a client on loopback claiming https is not
    believed (no Secure cookie, and its https Origin does not match the http page)."""
    replica = start_replica(
        {**env, "BROKER_TRUSTED_PROXIES": "10.0.0.0/8"}, tmp_path / "replica.log"
    )
    try:
        settings = load_settings(env)
        _, _, key = register(
            settings, sim, f"{replica.url}/oauth/callback", slug="demo", roles=ADMIN
        )
        claimed = replica.url.replace("http:", "https:")
        forged = httpx.post(
            f"{replica.url}/admin/login",
            data={"key": key},
            headers={"X-Forwarded-Proto": "https", "Origin": claimed},
        )
        assert forged.status_code == 403, forged.text
        plain = httpx.post(
            f"{replica.url}/admin/login",
            data={"key": key},
            headers={"X-Forwarded-Proto": "https", "Origin": replica.url},
        )
        assert plain.status_code == 303, plain.text
        (cookie,) = _set_cookies(plain)
        assert "secure" not in cookie.lower().split("; ")
    finally:
        replica.terminate()
