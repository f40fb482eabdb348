"""Vault / OpenBao adapter: client secrets in KV v2, tokens through Transit.

hvac is blocking, so this is the only module that calls it, always on a small dedicated
thread pool. Implements ``Cipher``, ``SecretStore`` and ``MacService``.

* Transit key: ``derived=true``; each ciphertext is bound to the portal identity and token
  kind through the derivation context, so a ciphertext copied to another row won't decrypt.
* Signing keys (``broker.core.signing``): Transit ``hmac``/``verify`` only; the keys never
  leave Vault.
* Client secrets: ``<kv_mount>/<kv_prefix>/apps/<slug>`` holds ``{"client_secrets": [...]}``,
  newest first, written with check-and-set; cached in memory for ``secret_cache_seconds``.
"""

from __future__ import annotations

import asyncio
import base64
import random
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import hvac
import hvac.exceptions
import requests
import structlog

from broker import metrics
from broker.config import Secret, Settings
from broker.core.batching import Coalescer
from broker.core.models import Mac
from broker.core.tasks import cancel_and_wait
from broker.errors import NotFound, Undecryptable, VaultError

T = TypeVar("T")
log = structlog.get_logger(__name__)
#: Items per Transit batch: OpenBao refuses 250 or more ("high complexity").
TRANSIT_BATCH = 200

# Transport failures and Vault answering "not now" (sealed, standby, 5xx).
_UNAVAILABLE: tuple[type[BaseException], ...] = (
    requests.exceptions.ConnectionError,
    requests.exceptions.Timeout,
    requests.exceptions.ChunkedEncodingError,  # the node died in the middle of an answer
    requests.exceptions.ContentDecodingError,
    hvac.exceptions.VaultDown,
    hvac.exceptions.InternalServerError,
    hvac.exceptions.BadGateway,
)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _mac(text: str) -> Mac | None:
    """``vault:v3:<base64>`` as a :class:`Mac`."""
    prefix, _, rest = text.partition(":v")
    version, _, digest = rest.partition(":")
    if prefix != "vault" or not version.isascii() or not version.isdigit() or not digest:
        return None
    try:
        return Mac(int(version), base64.b64decode(digest, validate=True))
    except ValueError:
        return None


class VaultAdapter:
    def __init__(self, settings: Settings, *, threads: int = 8) -> None:
        self._settings = settings
        # requests takes float seconds; the hvac stub says int.
        timeout: Any = settings.vault_timeout
        verify: Any = settings.vault_cacert or True
        self._addrs = settings.vault_addr_list
        self._current = 0
        self._client = hvac.Client(url=self._addrs[0], timeout=timeout, verify=verify)
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="vault")
        # Concurrent encrypts and decrypts (a cold cache, a busy refresher) share Transit
        # calls: one request and one thread hop per batch, not per token.
        self._encrypts: Coalescer[tuple[str, bytes], str] = Coalescer(
            self._encrypt_batch, max_items=TRANSIT_BATCH
        )
        self._decrypts: Coalescer[tuple[str, bytes], str] = Coalescer(
            self._decrypt_batch, max_items=TRANSIT_BATCH, split_on=(Undecryptable,)
        )
        self._secret_cache: dict[str, tuple[float, list[Secret]]] = {}
        self._renewal: asyncio.Task[None] | None = None

    # --- plumbing -------------------------------------------------------------------------
    async def _call(self, operation: str, fn: Callable[[], T]) -> T:
        """``fn`` on the Vault thread pool. With several addresses (HA nodes), one that is
        unreachable, sealed or failing is left for the next, each tried once per call."""
        loop = asyncio.get_running_loop()
        if self._settings.vault_auth == "token" and self._client.token:
            # From a file (BROKER_VAULT_TOKEN_FILE): a rotated token is used at once.
            self._client.token = self._settings.vault_token.get()
        for tried in range(1, len(self._addrs) + 1):
            metrics.VAULT_REQUESTS.labels(operation).inc()
            used = self._current
            try:
                return await loop.run_in_executor(self._pool, fn)
            except _UNAVAILABLE as exc:
                metrics.BACKEND_ERRORS.labels("vault", operation).inc()
                if tried < len(self._addrs):
                    # Compare-and-advance: of the calls that failed on this node, the first
                    # moves everyone on; the others retry on the node it moved to.
                    if self._current == used:
                        self._current = (used + 1) % len(self._addrs)
                        self._client.url = self._addrs[self._current]
                        log.warning("vault.next_address", index=self._current)
                    continue
                sealed = isinstance(exc, hvac.exceptions.VaultDown)
                raise VaultError(
                    "Vault is sealed" if sealed else "Vault is unreachable",
                    code="vault_sealed" if sealed else "vault_unavailable",
                ) from exc
            except hvac.exceptions.Forbidden as exc:
                metrics.BACKEND_ERRORS.labels("vault", operation).inc()
                raise VaultError("Vault denied the broker's token", code="vault_forbidden") from exc
        raise AssertionError("unreachable: the last address raises or returns")

    def _kv_path(self, *parts: str) -> str:
        return "/".join((self._settings.vault_kv_prefix, *parts))

    async def login(self) -> None:
        """Authenticate with the configured method (token, AppRole or Kubernetes)."""
        settings = self._settings

        def do_login() -> None:
            if settings.vault_auth == "token":
                self._client.token = settings.vault_token.get()
            elif settings.vault_auth == "approle":
                self._client.auth.approle.login(
                    role_id=settings.vault_role_id, secret_id=settings.vault_secret_id.get()
                )
            else:
                jwt = Path(settings.vault_k8s_jwt_path).read_text().strip()
                self._client.auth.kubernetes.login(role=settings.vault_k8s_role, jwt=jwt)

        try:
            await self._call("login", do_login)
        except OSError as exc:
            raise VaultError(
                f"cannot read the service-account token at {settings.vault_k8s_jwt_path}",
                code="vault_login_failed",
            ) from exc
        except hvac.exceptions.VaultError as exc:  # refused: role, secret or JWT not accepted
            raise VaultError(
                f"Vault refused the broker's {settings.vault_auth} login",
                code="vault_login_failed",
            ) from exc

    def start_renewal(self) -> None:
        """Keep the Vault token alive: renew at about 2/3 of its TTL (jittered); when renewal
        fails or the token was revoked, log in again with the configured method, retrying
        with backoff (1 s doubling to 30 s). Non-expiring tokens need nothing."""
        self._renewal = asyncio.create_task(self._renew_loop(), name="vault-token-renewal")

    async def _renew_loop(self) -> None:
        backoff = 1.0
        while True:
            try:
                info = await self._call("lookup_self", self._client.auth.token.lookup_self)
            except VaultError as exc:
                if exc.code != "vault_forbidden" or self._settings.vault_auth == "token":
                    await asyncio.sleep(10.0)  # unreachable or sealed: look again soon
                elif not await self._relogin():  # revoked or expired: log in again now
                    await asyncio.sleep(backoff)
                    backoff = min(30.0, backoff * 2)
                continue
            except Exception:  # the loop must outlive bugs
                log.exception("vault.renew_crashed")
                await asyncio.sleep(10.0)
                continue
            backoff = 1.0
            ttl = float(info["data"].get("ttl") or 0)
            if ttl <= 0:
                return  # a root or non-expiring token
            await asyncio.sleep(max(0.5, ttl * random.uniform(0.6, 0.72)))  # noqa: S311
            try:
                await self._call("renew_self", self._client.auth.token.renew_self)
                metrics.VAULT_RENEWALS.labels("renewed").inc()
            except (VaultError, hvac.exceptions.VaultError):
                metrics.VAULT_RENEWALS.labels("failed").inc()
                log.warning("vault.renew_failed", auth=self._settings.vault_auth)
                if self._settings.vault_auth != "token":
                    await self._relogin()
            except Exception:
                log.exception("vault.renew_crashed")

    async def _relogin(self) -> bool:
        try:
            await self.login()
        except VaultError as exc:
            log.error("vault.relogin_failed", auth=self._settings.vault_auth, code=exc.code)
            return False
        metrics.VAULT_RENEWALS.labels("relogin").inc()
        return True

    async def close(self) -> None:
        await cancel_and_wait(self._renewal)
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._client.adapter.close()

    async def ping(self) -> None:
        """Raises VaultError when Vault is unreachable or sealed (every node, with a list)."""

        def seal_status() -> None:
            status: dict[str, Any] = self._client.sys.read_seal_status()  # type: ignore[no-untyped-call]
            if status.get("sealed"):  # answered 200: for _call, a node to leave
                raise hvac.exceptions.VaultDown("sealed")

        await self._call("health", seal_status)

    # --- Transit --------------------------------------------------------------------------
    async def encrypt(self, items: Sequence[tuple[str, bytes]]) -> list[str]:
        return await self._encrypts.submit(items)

    async def decrypt(self, items: Sequence[tuple[str, bytes]]) -> list[str]:
        return await self._decrypts.submit(items)

    async def _encrypt_batch(self, items: Sequence[tuple[str, bytes]]) -> list[str]:
        batch = [{"plaintext": _b64(p.encode()), "context": _b64(c)} for p, c in items]

        def run() -> Any:
            return self._client.secrets.transit.encrypt_data(
                name=self._settings.vault_transit_key,
                batch_input=batch,
                mount_point=self._settings.vault_transit_mount,
            )

        response = await self._call("encrypt", run)
        results = response["data"]["batch_results"]
        if any("error" in r and r["error"] for r in results):
            metrics.BACKEND_ERRORS.labels("vault", "encrypt").inc()
            raise VaultError("Vault could not encrypt a token", code="encrypt_failed")
        return [str(r["ciphertext"]) for r in results]

    async def _decrypt_batch(self, items: Sequence[tuple[str, bytes]]) -> list[str]:
        batch = [{"ciphertext": ct, "context": _b64(c)} for ct, c in items]

        def run() -> Any:
            return self._client.secrets.transit.decrypt_data(
                name=self._settings.vault_transit_key,
                batch_input=batch,
                mount_point=self._settings.vault_transit_mount,
            )

        try:
            response = await self._call("decrypt", run)
        except hvac.exceptions.InvalidRequest as exc:
            metrics.BACKEND_ERRORS.labels("vault", "decrypt").inc()
            raise Undecryptable("a stored token does not decrypt") from exc
        results = response["data"]["batch_results"]
        if any("error" in r and r["error"] for r in results):
            metrics.BACKEND_ERRORS.labels("vault", "decrypt").inc()
            raise Undecryptable("a stored token does not decrypt")
        return [base64.b64decode(r["plaintext"]).decode() for r in results]

    async def rewrap(self, items: Sequence[tuple[str, bytes]]) -> list[str]:
        """Re-encrypt ciphertexts under the key's latest version, in one round trip."""
        batch = [{"ciphertext": ct, "context": _b64(c)} for ct, c in items]

        def run() -> Any:
            return self._client.secrets.transit.rewrap_data(  # type: ignore[no-untyped-call]
                name=self._settings.vault_transit_key,
                ciphertext=None,
                batch_input=batch,
                mount_point=self._settings.vault_transit_mount,
            )

        try:
            response = await self._call("rewrap", run)
        except hvac.exceptions.InvalidRequest as exc:
            raise Undecryptable("a stored token cannot be rewrapped") from exc
        results = response["data"]["batch_results"]
        if any("error" in r and r["error"] for r in results):
            raise Undecryptable("a stored token cannot be rewrapped")
        return [str(r["ciphertext"]) for r in results]

    async def key_versions(self) -> tuple[int, int]:
        """(latest version, min_decryption_version) of the Transit key."""
        response = await self._call(
            "read_key",
            lambda: self._client.secrets.transit.read_key(  # type: ignore[no-untyped-call]
                name=self._settings.vault_transit_key,
                mount_point=self._settings.vault_transit_mount,
            ),
        )
        data = response["data"]
        return int(data["latest_version"]), int(data["min_decryption_version"])

    async def set_min_decryption_version(self, version: int) -> None:
        await self._call(
            "key_config",
            lambda: self._client.secrets.transit.update_key_configuration(  # type: ignore[no-untyped-call]
                name=self._settings.vault_transit_key,
                min_decryption_version=version,
                mount_point=self._settings.vault_transit_mount,
            ),
        )

    # --- Transit HMAC (signing keys) -------------------------------------------------------
    async def hmac(
        self, key: str, items: Sequence[bytes], *, version: int | None = None
    ) -> list[Mac]:
        data: dict[str, Any] = {"batch_input": [{"input": _b64(i)} for i in items]}
        if version is not None:
            data["key_version"] = version
        path = f"{self._settings.vault_transit_mount}/hmac/{key}"
        try:
            response: Any = await self._call(
                "hmac", lambda: self._client.write_data(path, data=data)
            )
        except hvac.exceptions.InvalidRequest as exc:  # no such key, or no such version
            raise VaultError(
                f"Vault could not sign with {key!r} (is it created? deploy/vault/bootstrap.sh)",
                code="sign_failed",
            ) from exc
        results = response["data"]["batch_results"]
        macs = [_mac(str(r.get("hmac") or "")) for r in results]
        if len(macs) != len(items) or any(m is None for m in macs):
            metrics.BACKEND_ERRORS.labels("vault", "hmac").inc()
            raise VaultError("Vault could not sign", code="sign_failed")
        return [m for m in macs if m is not None]

    async def verify(self, key: str, items: Sequence[tuple[bytes, Mac]]) -> list[bool]:
        batch = [
            {"input": _b64(i), "hmac": f"vault:v{m.version}:{_b64(m.digest)}"} for i, m in items
        ]
        path = f"{self._settings.vault_transit_mount}/verify/{key}"
        try:
            response: Any = await self._call(
                "verify", lambda: self._client.write_data(path, data={"batch_input": batch})
            )
        except hvac.exceptions.InvalidRequest:  # the whole batch refused: no valid MAC in it
            return [False] * len(items)
        results = response["data"]["batch_results"]
        return [r.get("valid") is True and not r.get("error") for r in results]

    async def rotate(self, key: str) -> int:
        mount = self._settings.vault_transit_mount
        await self._call(
            "rotate_key",
            lambda: self._client.secrets.transit.rotate_key(name=key, mount_point=mount),  # type: ignore[no-untyped-call]  # untyped in types-hvac
        )
        return await self.latest_version(key)

    async def latest_version(self, key: str) -> int:
        path = f"{self._settings.vault_transit_mount}/keys/{key}"
        try:
            response: Any = await self._call("read_key", lambda: self._client.read(path))
        except hvac.exceptions.InvalidPath as exc:
            raise NotFound(f"no Transit key {key!r}", code="signing_key_missing") from exc
        if not response:
            raise NotFound(f"no Transit key {key!r}", code="signing_key_missing")
        return int(response["data"]["latest_version"])

    # --- KV v2 ----------------------------------------------------------------------------
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
