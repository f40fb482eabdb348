"""Logging in to Vault (token, AppRole or Kubernetes) and keeping the token alive. Rare calls:
they stay on hvac (:meth:`VaultBase._call`)."""

from __future__ import annotations

from pathlib import Path

import hvac.exceptions
import structlog

from broker import metrics
from broker.adapters.vault.base import VaultBase
from broker.core.tasks import JITTER, BackgroundLoop
from broker.errors import VaultError

log = structlog.get_logger(__name__)


#: The wait before looking the token up again after Vault could not answer (unreachable,
#: sealed) or the renewal step crashed.
_RETRY = 10.0


class VaultAuth(VaultBase):
    _renewal: BackgroundLoop | None = None
    #: The renewal's state: the wait before its next step, whether that step renews (else it
    #: looks the token up), and the backoff of failing logins (1 s doubling to 30 s).
    _next_wait = 0.0
    _renew_next = False
    _login_backoff = 1.0

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
        with backoff (1 s doubling to 30 s). Non-expiring tokens need nothing. A failing
        look-up is counted in ``broker_background_failures_total{loop="vault_renewal"}``."""
        self._renewal = BackgroundLoop(
            metrics.Background.VAULT_RENEWAL, self._renewal_step, interval=lambda: self._next_wait
        )
        self._renewal.start()

    async def _renewal_step(self) -> bool:
        """Renew the token if it is time to, else look it up and plan the renewal. True: look
        it up again at once (renewed, or logged in again)."""
        if self._renew_next:
            self._renew_next = False
            self._next_wait = 0.0  # whatever happens, look the token up again next
            await self._renew()
            return True
        self._next_wait = _RETRY  # unreachable, sealed, or a bug: look again soon
        try:
            info = await self._call("lookup_self", self._client.auth.token.lookup_self)
        except VaultError as exc:
            if exc.code != "vault_forbidden" or self._settings.vault_auth == "token":
                raise
            if await self._relogin():  # revoked or expired: log in again now
                return True
            self._next_wait = self._login_backoff
            self._login_backoff = min(30.0, self._login_backoff * 2)
            return False
        self._login_backoff = 1.0
        ttl = float(info["data"].get("ttl") or 0)
        if ttl <= 0 and self._renewal is not None:
            self._renewal.stop_soon()  # a root or non-expiring token
            return False
        self._next_wait = max(0.5, ttl * JITTER.uniform(0.6, 0.72))
        self._renew_next = True
        return False

    async def _renew(self) -> None:
        try:
            await self._call("renew_self", self._client.auth.token.renew_self)
            metrics.VAULT_RENEWALS.labels(metrics.Renewal.RENEWED).inc()
        except (VaultError, hvac.exceptions.VaultError):
            metrics.VAULT_RENEWALS.labels(metrics.Renewal.FAILED).inc()
            log.warning("vault.renew_failed", auth=self._settings.vault_auth)
            if self._settings.vault_auth != "token":
                await self._relogin()

    async def _relogin(self) -> bool:
        try:
            await self.login()
        except VaultError as exc:
            log.error("vault.relogin_failed", auth=self._settings.vault_auth, code=exc.code)
            return False
        metrics.VAULT_RENEWALS.labels(metrics.Renewal.RELOGIN).inc()
        return True

    async def close(self) -> None:
        if self._renewal is not None:
            await self._renewal.close()
        await super().close()
