"""The connection to Vault shared by the adapter's parts: the node list and failover, the
broker's token, and two ways to call.

* :meth:`VaultBase._request`: Vault's HTTP API on the event loop
  (:mod:`broker.adapters.http1`: HTTP/1.1, pooled keep-alive connections): every Transit call
  and the health check, the calls a cache miss or a refresh makes.
* :meth:`VaultBase._call`: ``hvac`` (blocking) on a small thread pool, for what is rare (logins,
  token renewal, KV reads of client secrets, cached for minutes).

Both leave a node that is unreachable, sealed or failing for the next one (each tried once per
call) and map failures the same way: ``vault_sealed``, ``vault_unavailable``,
``vault_forbidden`` (403); any other refusal is the caller's to interpret (:class:`Refused`).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import certifi
import hvac
import hvac.exceptions
import requests
import structlog

from broker import metrics
from broker.adapters import tls
from broker.adapters.http1 import BadAnswer, Http1Pool
from broker.config import Settings
from broker.errors import VaultError

T = TypeVar("T")
log = structlog.get_logger(__name__)

# hvac: transport failures and Vault answering "not now" (sealed, standby, 5xx).
_UNAVAILABLE: tuple[type[BaseException], ...] = (
    requests.exceptions.ConnectionError,
    requests.exceptions.Timeout,
    requests.exceptions.ChunkedEncodingError,  # the node died in the middle of an answer
    requests.exceptions.ContentDecodingError,
    hvac.exceptions.VaultDown,
    hvac.exceptions.InternalServerError,
    hvac.exceptions.BadGateway,
)


class Refused(VaultError):
    """Vault answered the request with a 4xx other than 403 (e.g. 400: a ciphertext that
    does not decrypt, a key that does not exist). ``body`` is its JSON, when it sent some;
    the operation that called interprets it (an uninterpreted one is a 500)."""

    status = 500
    code = "vault_refused"
    title = "Vault refused a request"

    def __init__(self, status: int, body: dict[str, Any] | None) -> None:
        super().__init__(f"Vault refused the request ({status})")
        self.http_status = status
        self.body = body or {}


class _NodeFailed(Exception):
    """This node cannot answer now: the next one may (``sealed``: it said it is sealed)."""

    def __init__(self, sealed: bool) -> None:
        self.sealed = sealed


#: What leaves the node for the next one (hvac's failures, or the HTTP client's).
_NODE_FAILED: tuple[type[BaseException], ...] = (_NodeFailed, *_UNAVAILABLE)


class VaultBase:
    def __init__(self, settings: Settings, *, threads: int = 8) -> None:
        self._settings = settings
        # requests takes float seconds; the hvac stub says int.
        timeout: Any = settings.vault_timeout
        verify: Any = settings.vault_cacert or True
        self._addrs = settings.vault_addr_list
        self._current = 0
        self._client = hvac.Client(url=self._addrs[0], timeout=timeout, verify=verify)
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="vault")
        # BROKER_VAULT_CACERT alone, else the public CAs (as hvac trusts).
        trusted = tls.verify(ca_file=settings.vault_cacert or certifi.where())
        assert not isinstance(trusted, bool)
        # Vault closes a connection idle for 5 minutes (its listener's http_idle_timeout); a
        # load balancer in front of it may sooner. A kept connection closed just as a request
        # goes out sends that request again (resend_stale), so the expiry only spares that.
        self._http = Http1Pool(timeout=settings.vault_timeout, tls=trusted, keepalive_expiry=30.0)

    # --- the node list ----------------------------------------------------------------------
    def _leave(self, used: int) -> None:
        """Compare-and-advance: of the calls that failed on node ``used``, the first moves
        everyone on; the others retry on the node it moved to."""
        if self._current == used:
            self._current = (used + 1) % len(self._addrs)
            self._client.url = self._addrs[self._current]
            log.warning("vault.next_address", index=self._current)

    def _token(self) -> str:
        if self._settings.vault_auth == "token" and self._client.token:
            # From a file (BROKER_VAULT_TOKEN_FILE): a rotated token is used at once.
            self._client.token = self._settings.vault_token.get()
        return str(self._client.token or "")

    async def _on_each_node(self, operation: metrics.VaultOp, attempt: Callable[[], Any]) -> Any:
        """``await attempt()`` on the current node, then on the next ones while a node
        fails with :class:`_NodeFailed` (hvac's ``_UNAVAILABLE``, for the thread pool)."""
        for tried in range(1, len(self._addrs) + 1):
            metrics.VAULT_REQUESTS.labels(operation).inc()
            used = self._current
            try:
                return await attempt()
            except _NODE_FAILED as exc:
                metrics.backend_failed("vault", operation)
                if tried < len(self._addrs):
                    self._leave(used)
                    continue
                sealed = isinstance(exc, hvac.exceptions.VaultDown) or (
                    isinstance(exc, _NodeFailed) and exc.sealed
                )
                raise VaultError(
                    "Vault is sealed" if sealed else "Vault is unreachable",
                    code="vault_sealed" if sealed else "vault_unavailable",
                ) from exc
            except hvac.exceptions.Forbidden as exc:
                metrics.backend_failed("vault", operation)
                raise _forbidden() from exc
        raise AssertionError("unreachable: the last address raises or returns")

    # --- the two ways to call ---------------------------------------------------------------
    async def _call(self, operation: metrics.VaultOp, fn: Callable[[], T]) -> T:
        """``fn`` (hvac) on the Vault thread pool, on each node in turn as needed."""
        loop = asyncio.get_running_loop()
        self._token()

        async def attempt() -> T:
            return await loop.run_in_executor(self._pool, fn)

        result: T = await self._on_each_node(operation, attempt)
        return result

    async def _request(
        self, operation: metrics.VaultOp, method: str, path: str, body: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """``method /v1/<path>`` with ``body`` as JSON, on the event loop; the answer's JSON
        ({} when empty). Raises :class:`Refused` on a 4xx other than 403, VaultError else."""
        headers = {"X-Vault-Request": "true"}
        if token := self._token():
            if not (token.isascii() and token.isprintable()):
                raise _forbidden()  # never a header of our own making
            headers["X-Vault-Token"] = token
        content = None if body is None else json.dumps(body, separators=(",", ":")).encode()
        if content is not None:
            headers["Content-Type"] = "application/json"

        async def attempt() -> dict[str, Any]:
            status, raw = await self._exchange(method, f"/v1/{path}", headers, content)
            if status == 403:
                metrics.backend_failed("vault", operation)
                raise _forbidden()
            if status >= 500 or status == 429:  # sealed or standby (503), failing, throttled
                raise _NodeFailed(sealed=status == 503)
            if 300 <= status < 400:  # a standby that redirects instead of forwarding
                raise _NodeFailed(sealed=False)
            try:
                answer = json.loads(raw) if raw else {}
            except ValueError as exc:  # not Vault answering (a proxy's error page)
                raise _NodeFailed(sealed=False) from exc
            if status >= 400:
                raise Refused(status, answer if isinstance(answer, dict) else None)
            return answer if isinstance(answer, dict) else {}

        result: dict[str, Any] = await self._on_each_node(operation, attempt)
        return result

    async def _exchange(
        self, method: str, path: str, headers: dict[str, str], body: bytes | None
    ) -> tuple[int, bytes]:
        """One HTTP exchange with the current node; a node that cannot answer now (refused,
        reset, TLS refused, timed out, cut mid-answer) is :class:`_NodeFailed`."""
        base = self._addrs[self._current]
        try:
            answer = await self._http.request(base, method, path, headers, body)
        except (OSError, BadAnswer) as exc:  # TimeoutError is an OSError
            raise _NodeFailed(sealed=False) from exc
        return answer.status, answer.body

    # --- lifecycle --------------------------------------------------------------------------
    async def ping(self) -> None:
        """Raises VaultError when Vault is unreachable or sealed (every node, with a list)."""

        async def seal_status() -> None:
            status, raw = await self._exchange("GET", "/v1/sys/seal-status", {}, None)
            if status != 200:
                raise _NodeFailed(sealed=status == 503)
            try:
                sealed = bool(json.loads(raw).get("sealed"))
            except (ValueError, AttributeError) as exc:
                raise _NodeFailed(sealed=False) from exc
            if sealed:  # a sealed node answers 200 {"sealed": true}: a node to leave
                raise _NodeFailed(sealed=True)

        await self._on_each_node("health", seal_status)

    async def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._client.adapter.close()
        self._http.close()


def _forbidden() -> VaultError:
    return VaultError("Vault denied the broker's token", code="vault_forbidden")
