"""App client secrets in KV v2: ``<kv_mount>/<kv_prefix>/apps/<slug>`` holds
``{"client_secrets": [...]}``, newest first, written with check-and-set; cached in memory for
``secret_cache_seconds``. Read rarely (the cache), so on hvac (:meth:`VaultBase._call`).

A private app's token: ``<kv_mount>/<kv_prefix>/apps/<slug>/private-app/<hub_id>`` holds
``{"access_token": ...}``, written with check-and-set, read on a token cache miss only (the
token service caches it, and a rotation must be seen by the next read), destroyed with every
version on revocation."""

from __future__ import annotations

import contextlib
import time
from typing import Any

import hvac.exceptions

from broker.adapters.vault.base import VaultBase
from broker.config import Secret, Settings
from broker.core.models import PortalKey
from broker.errors import NotFound


class VaultSecrets(VaultBase):
    def __init__(self, settings: Settings, *, threads: int = 8) -> None:
        super().__init__(settings, threads=threads)
        self._secret_cache: dict[str, tuple[float, list[Secret]]] = {}

    def _kv_path(self, *parts: str) -> str:
        return "/".join((self._settings.vault_kv_prefix, *parts))

    def _read_kv(self, path: str) -> tuple[dict[str, Any], int] | None:
        try:
            response = self._client.secrets.kv.v2.read_secret_version(
                path=path, mount_point=self._settings.vault_kv_mount, raise_on_deleted_version=True
            )
        except hvac.exceptions.InvalidPath:
            return None
        data = response["data"]
        return data["data"], int(data["metadata"]["version"])

    def _write_kv(self, path: str, data: dict[str, Any], cas: int) -> None:
        self._client.secrets.kv.v2.create_or_update_secret(
            path=path, secret=data, cas=cas, mount_point=self._settings.vault_kv_mount
        )

    async def client_secrets(self, app: str, *, fresh: bool = False) -> list[Secret]:
        cached = self._secret_cache.get(app)
        now = time.monotonic()
        if cached is not None and cached[0] > now and not fresh:
            return cached[1]
        found = await self._call("kv_read", lambda: self._read_kv(self._kv_path("apps", app)))
        if found is None or not found[0].get("client_secrets"):
            raise NotFound(f"no client secret stored for app {app!r}", code="app_secret_missing")
        values = [Secret(str(s)) for s in found[0]["client_secrets"]]
        self._secret_cache[app] = (now + self._settings.secret_cache_seconds, values)
        return values

    async def add_client_secret(self, app: str, secret: Secret) -> None:
        path = self._kv_path("apps", app)

        def run() -> None:
            current = self._read_kv(path)
            existing = [] if current is None else list(current[0].get("client_secrets", []))
            values = [secret.get(), *(s for s in existing if s != secret.get())]
            self._write_kv(path, {"client_secrets": values}, 0 if current is None else current[1])

        await self._call("kv_write", run)
        self._secret_cache.pop(app, None)

    def _private_path(self, key: PortalKey) -> str:
        return self._kv_path("apps", key.app, "private-app", str(key.hub_id))

    async def private_app_token(self, key: PortalKey) -> Secret:
        found = await self._call("kv_read", lambda: self._read_kv(self._private_path(key)))
        if found is None or not found[0].get("access_token"):
            raise NotFound(f"no private-app token stored for {key}", code="portal_not_found")
        return Secret(str(found[0]["access_token"]))

    async def put_private_app_token(self, key: PortalKey, token: Secret) -> None:
        path = self._private_path(key)

        def run() -> None:
            current = self._read_kv(path)
            cas = 0 if current is None else current[1]
            self._write_kv(path, {"access_token": token.get()}, cas)

        await self._call("kv_write", run)

    async def delete_private_app_token(self, key: PortalKey) -> None:
        path = self._private_path(key)

        def run() -> None:
            with contextlib.suppress(hvac.exceptions.InvalidPath):  # nothing stored: gone
                self._client.secrets.kv.v2.delete_metadata_and_all_versions(
                    path=path, mount_point=self._settings.vault_kv_mount
                )

        await self._call("kv_delete", run)
