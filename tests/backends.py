"""Where the test session's PostgreSQL, Redis-protocol server and Vault come from.

:func:`provide_backends` picks, in this order:

1. ``env``: ``BROKER_TEST_DATABASE_URL``, ``BROKER_TEST_REDIS_URL``, ``BROKER_TEST_VAULT_ADDR``
   and ``BROKER_TEST_VAULT_TOKEN`` when all four are set (setting only some is an error, not
   a silent fallback); the Vault is bootstrapped with :func:`bootstrap_vault`.
2. ``testcontainers``: only when a Docker engine answers a ping within two seconds.
3. ``embedded``: :class:`~broker.dev.stack.EmbeddedStack` from pip wheels.

It yields :class:`ProvidedBackends`, a :class:`BackendUrls` that also says in ``mode`` which
source was chosen, in one line without credentials, so the session can print it.
"""

from __future__ import annotations

import gc
import os
import secrets
import warnings
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from broker.dev.stack import BackendUrls, EmbeddedStack, bootstrap_vault

ENV_KEYS = (
    "BROKER_TEST_DATABASE_URL",
    "BROKER_TEST_REDIS_URL",
    "BROKER_TEST_VAULT_ADDR",
    "BROKER_TEST_VAULT_TOKEN",
)
POSTGRES_IMAGE = "postgres:18"
VALKEY_IMAGE = "valkey/valkey:9"
OPENBAO_IMAGE = "openbao/openbao:latest"
FAST_POSTGRES = (
    "postgres -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
)


@dataclass(frozen=True)
class ProvidedBackends(BackendUrls):
    """The URLs plus ``mode``: one line naming the source, safe to print."""

    mode: str = field(default="", compare=False)


@contextmanager
def provide_backends() -> Iterator[ProvidedBackends]:
    """Yield backends for the session; whatever this started is stopped on exit."""
    from_env = _urls_from_env()
    if from_env is not None:
        bootstrap_vault(from_env.vault_addr, from_env.vault_token)
        yield _provided(from_env, "env: BROKER_TEST_* URLs")
    elif _docker_answers():
        with _containers() as urls:
            yield _provided(urls, "testcontainers: Docker engine answered")
    else:
        with EmbeddedStack(fast=True) as stack:
            yield _provided(stack.urls, "embedded: servers from pip wheels, no Docker")


def _provided(urls: BackendUrls, source: str) -> ProvidedBackends:
    where = ", ".join(
        f"{name} {_host_port(url)}"
        for name, url in (
            ("postgres", urls.database_url),
            ("redis", urls.redis_url),
            ("vault", urls.vault_addr),
        )
    )
    return ProvidedBackends(
        database_url=urls.database_url,
        redis_url=urls.redis_url,
        vault_addr=urls.vault_addr,
        vault_token=urls.vault_token,
        mode=f"{source} ({where})",
    )


def _host_port(url: str) -> str:
    """``host:port`` only: a URL from the environment may carry a password."""
    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port}"


def _urls_from_env() -> BackendUrls | None:
    values = {key: os.environ.get(key, "") for key in ENV_KEYS}
    missing = [key for key, value in values.items() if not value]
    if len(missing) == len(ENV_KEYS):
        return None
    if missing:
        raise RuntimeError(f"set all of {', '.join(ENV_KEYS)} or none; missing {missing}")
    return BackendUrls(*values.values())


def _docker_answers() -> bool:
    """Whether a Docker engine answers a ping within two seconds.

    The docker SDK leaks its socket when the engine is absent; the ResourceWarning is
    collected here, where it is ignored, rather than failing some later test.
    """
    try:
        import docker  # type: ignore[import-untyped]  # no stubs installed
        import docker.errors  # type: ignore[import-untyped]  # no stubs installed
        import requests.exceptions
    except ImportError:
        return False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        try:
            client = docker.from_env(timeout=2)
            try:
                return bool(client.ping())
            finally:
                client.close()
        except (docker.errors.DockerException, requests.exceptions.RequestException, OSError):
            return False
        finally:
            gc.collect()


@contextmanager
def _containers() -> Iterator[BackendUrls]:
    """PostgreSQL 18, Valkey 9 and OpenBao in dev mode, removed on exit."""
    from testcontainers.community.postgres import PostgresContainer
    from testcontainers.community.valkey import ValkeyContainer
    from testcontainers.core.container import DockerContainer
    from testcontainers.core.wait_strategies import HttpWaitStrategy

    token = secrets.token_urlsafe(24)
    with ExitStack() as started:
        postgres = started.enter_context(
            PostgresContainer(
                POSTGRES_IMAGE,
                username="postgres",
                password="postgres",
                dbname="postgres",
                driver=None,
            ).with_command(FAST_POSTGRES)
        )
        valkey = started.enter_context(ValkeyContainer(VALKEY_IMAGE))
        openbao = started.enter_context(
            DockerContainer(OPENBAO_IMAGE)
            .with_env("BAO_DEV_ROOT_TOKEN_ID", token)
            .with_env("BAO_DEV_LISTEN_ADDRESS", "0.0.0.0:8200")
            .with_exposed_ports(8200)
            .with_command("server -dev -dev-no-store-token")
            .waiting_for(HttpWaitStrategy(8200, "/v1/sys/health").for_status_code(200))
        )
        bao_host = openbao.get_container_host_ip()
        urls = BackendUrls(
            database_url=postgres.get_connection_url(driver=None),
            redis_url=f"redis://{valkey.get_host()}:{valkey.get_exposed_port()}/0",
            vault_addr=f"http://{bao_host}:{openbao.get_exposed_port(8200)}",
            vault_token=token,
        )
        bootstrap_vault(urls.vault_addr, urls.vault_token)
        yield urls
