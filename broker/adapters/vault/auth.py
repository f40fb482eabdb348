"""Logging in to Vault (token, AppRole or Kubernetes) and keeping the token alive. Rare calls:
they stay on hvac (:meth:`VaultBase._call`)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import hvac.exceptions
import structlog

from broker import metrics
from broker.adapters.vault.base import VaultBase
from broker.core.tasks import JITTER, cancel_and_wait
from broker.errors import VaultError

log = structlog.get_logger(__name__)


class VaultAuth(VaultBase):
    _renewal: asyncio.Task[None] | None = None

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
            await asyncio.sleep(max(0.5, ttl * JITTER.uniform(0.6, 0.72)))
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
        await super().close()
