"""Transit: tokens encrypted under one derived key, and the signing keys' HMACs.

* The token key is ``derived=true``: each ciphertext is bound to the portal identity and
  token kind through the derivation context, so a ciphertext copied to another row won't
  decrypt.
* Concurrent encrypts and decrypts (a cold cache, a busy refresher) are gathered into
  ``batch_input`` calls (:class:`~broker.core.batching.Coalescer`). Vault answers a batch
  item by item: an item it refuses (a tampered ciphertext) fails only its own caller.
* Signing keys (``broker.core.signing``): ``hmac``/``verify`` only; the keys never leave
  Vault.

Every call here goes over the event loop's HTTP client (:meth:`VaultBase._request`).
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from broker import metrics
from broker.adapters.vault.base import Refused, VaultBase
from broker.config import Settings
from broker.core.batching import Coalescer
from broker.core.models import Mac
from broker.core.ports import KeyVersions
from broker.errors import NotFound, Undecryptable, VaultError

R = TypeVar("R")
#: Items per Transit batch: OpenBao refuses 250 or more ("high complexity").
TRANSIT_BATCH = 200
#: Transit batches out at once per kind; the next one gathers what arrives meanwhile (1, 2
#: and 4 measured alike on the bench's cold path; fewer means bigger batches, fewer calls).
TRANSIT_INFLIGHT = 2


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


def _batch_results(answer: dict[str, Any], count: int) -> list[Any] | None:
    results = (answer.get("data") or {}).get("batch_results")
    return results if isinstance(results, list) and len(results) == count else None


def _per_item(
    results: list[Any], value: Callable[[dict[str, Any]], R], error: Callable[[], Exception]
) -> list[R | Exception]:
    """Each item's value, or a fresh ``error()`` for an item Vault refused."""
    out: list[R | Exception] = []
    for result in results:
        try:
            if not isinstance(result, dict) or result.get("error"):
                raise LookupError
            out.append(value(result))
        except (LookupError, ValueError, TypeError):
            out.append(error())
    return out


def _plaintext(result: dict[str, Any]) -> str:
    return base64.b64decode(result["plaintext"], validate=True).decode()


def _undecryptable() -> Undecryptable:
    return Undecryptable("a stored token does not decrypt")


def _unencryptable() -> VaultError:
    return VaultError("Vault could not encrypt a token", code="encrypt_failed")


class VaultTransit(VaultBase):
    def __init__(self, settings: Settings, *, threads: int = 8) -> None:
        super().__init__(settings, threads=threads)
        self._encrypts: Coalescer[tuple[str, bytes], str] = Coalescer(
            self._encrypt_batch, max_items=TRANSIT_BATCH, max_inflight=TRANSIT_INFLIGHT
        )
        # A batch Vault refuses whole (it names no item) is split to find the bad one.
        self._decrypts: Coalescer[tuple[str, bytes], str] = Coalescer(
            self._decrypt_batch,
            max_items=TRANSIT_BATCH,
            max_inflight=TRANSIT_INFLIGHT,
            split_on=(Undecryptable,),
        )

    def _tokens_key(self, action: str) -> str:
        """The API path of ``action`` (encrypt, decrypt, keys, ...) on the tokens' key."""
        settings = self._settings
        return f"{settings.vault_transit_mount}/{action}/{settings.vault_transit_key}"

    async def encrypt(self, items: Sequence[tuple[str, bytes]]) -> list[str]:
        return await self._encrypts.submit(items)

    async def decrypt(self, items: Sequence[tuple[str, bytes]]) -> list[str]:
        return await self._decrypts.submit(items)

    async def _encrypt_batch(self, items: Sequence[tuple[str, bytes]]) -> list[str | Exception]:
        batch = [{"plaintext": _b64(p.encode()), "context": _b64(c)} for p, c in items]
        try:
            answer = await self._request(
                "encrypt", "POST", self._tokens_key("encrypt"), {"batch_input": batch}
            )
        except Refused as exc:
            metrics.backend_failed("vault", "encrypt")
            raise _unencryptable() from exc
        results = _batch_results(answer, len(items))
        if results is None:
            raise _unencryptable()
        out = _per_item(results, lambda r: str(r["ciphertext"]), _unencryptable)
        if any(isinstance(r, Exception) for r in out):
            metrics.backend_failed("vault", "encrypt")
        return out

    async def _decrypt_batch(self, items: Sequence[tuple[str, bytes]]) -> list[str | Exception]:
        batch = [{"ciphertext": ct, "context": _b64(c)} for ct, c in items]
        refused: Refused | None = None
        try:
            answer = await self._request(
                "decrypt", "POST", self._tokens_key("decrypt"), {"batch_input": batch}
            )
        except Refused as exc:
            # An item refused (a 400 for the whole batch): batch_results still says, item by
            # item, which ones decrypted.
            answer, refused = exc.body, exc
        results = _batch_results(answer, len(items))
        if results is None:
            metrics.backend_failed("vault", "decrypt")
            if refused is None:  # a 2xx that is not a decrypt's answer: never "tampered"
                raise VaultError("Vault's decrypt answer had no results", code="vault_unavailable")
            if refused.http_status != 400:
                # 404, 405, ...: a wrong mount, path or key, not a bad ciphertext. Never
                # split the batch over it or flag a portal for it.
                raise refused
            raise _undecryptable() from refused
        out = _per_item(results, _plaintext, _undecryptable)
        if refused is not None or any(isinstance(r, Exception) for r in out):
            metrics.backend_failed("vault", "decrypt")
        return out

    async def rewrap(self, items: Sequence[tuple[str, bytes]]) -> list[str]:
        """Re-encrypt ciphertexts under the key's latest version, in one round trip."""
        batch = [{"ciphertext": ct, "context": _b64(c)} for ct, c in items]
        try:
            answer = await self._request(
                "rewrap", "POST", self._tokens_key("rewrap"), {"batch_input": batch}
            )
        except Refused as exc:
            raise Undecryptable("a stored token cannot be rewrapped") from exc
        results = _batch_results(answer, len(items))
        if results is None or any(not r.get("ciphertext") or r.get("error") for r in results):
            raise Undecryptable("a stored token cannot be rewrapped")
        return [str(r["ciphertext"]) for r in results]

    async def key_versions(self) -> KeyVersions:
        answer = await self._request("read_key", "GET", self._tokens_key("keys"))
        data = answer["data"]
        return KeyVersions(int(data["latest_version"]), int(data["min_decryption_version"]))

    async def set_min_decryption_version(self, version: int) -> None:
        body = {"min_decryption_version": version}
        await self._request("key_config", "POST", self._tokens_key("keys") + "/config", body)

    # --- HMAC (signing keys) ----------------------------------------------------------------
    async def hmac(
        self, key: str, items: Sequence[bytes], *, version: int | None = None
    ) -> list[Mac]:
        body: dict[str, Any] = {"batch_input": [{"input": _b64(i)} for i in items]}
        if version is not None:
            body["key_version"] = version
        path = f"{self._settings.vault_transit_mount}/hmac/{key}"
        try:
            answer = await self._request("hmac", "POST", path, body)
        except Refused as exc:  # no such key, or no such version
            raise VaultError(
                f"Vault could not sign with {key!r} (is it created? deploy/vault/bootstrap.sh)",
                code="sign_failed",
            ) from exc
        macs = [_mac(str(r.get("hmac") or "")) for r in _batch_results(answer, len(items)) or []]
        if len(macs) != len(items) or any(m is None for m in macs):
            metrics.backend_failed("vault", "hmac")
            raise VaultError("Vault could not sign", code="sign_failed")
        return [m for m in macs if m is not None]

    async def verify(self, key: str, items: Sequence[tuple[bytes, Mac]]) -> list[bool]:
        batch = [
            {"input": _b64(i), "hmac": f"vault:v{m.version}:{_b64(m.digest)}"} for i, m in items
        ]
        path = f"{self._settings.vault_transit_mount}/verify/{key}"
        try:
            answer = await self._request("verify", "POST", path, {"batch_input": batch})
        except Refused:  # the whole batch refused: no valid MAC in it
            return [False] * len(items)
        results = _batch_results(answer, len(items)) or [{}] * len(items)
        return [r.get("valid") is True and not r.get("error") for r in results]

    async def rotate(self, key: str) -> int:
        mount = self._settings.vault_transit_mount
        await self._request("rotate_key", "POST", f"{mount}/keys/{key}/rotate", {})
        return await self.latest_version(key)

    async def latest_version(self, key: str) -> int:
        path = f"{self._settings.vault_transit_mount}/keys/{key}"
        try:
            answer = await self._request("read_key", "GET", path)
        except Refused as exc:
            if exc.http_status != 404:
                raise
            answer = {}
        if not answer.get("data"):
            raise NotFound(f"no Transit key {key!r}", code="signing_key_missing")
        return int(answer["data"]["latest_version"])
