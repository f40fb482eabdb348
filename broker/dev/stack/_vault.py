"""Making a Vault or OpenBao server ready for the broker (KV v2, the Transit keys)."""

from __future__ import annotations

import contextlib
from typing import Any

import hvac
import hvac.exceptions

from broker.core.signing import Purpose
from broker.dev.stack._common import VaultBootstrapError


def bootstrap_vault(
    addr: str,
    token: str,
    *,
    transit_mount: str = "transit",
    key_name: str = "hubspot-tokens",
    signing_key_prefix: str = "hubspot-token-broker-",
    cacert: str | None = None,
) -> None:
    """Make a Vault or OpenBao server ready for the broker; idempotent, safe to run concurrently.

    Afterwards KV v2 is mounted at ``secret/``, the Transit engine at *transit_mount*, and the
    Transit key *key_name* exists as ``aes256-gcm96`` with ``derived=True`` (every encryption
    needs a context), and so does one signing key per :class:`Purpose`
    (``<signing_key_prefix><purpose>``, ``aes256-gcm96``, used only for HMACs; never
    exportable). Missing pieces are created; existing ones are verified, never changed:
    a mount of another type, KV v1 at ``secret/`` or a key of another type or not derived
    raises :class:`VaultBootstrapError`. Transport and permission errors propagate as hvac
    (or requests) exceptions. The token needs rights on ``sys/mounts`` and the transit mount.
    ``cacert``: the CA bundle of a server with a private certificate.
    """
    client = hvac.Client(url=addr, token=token, timeout=10, verify=cacert or True)
    try:
        _ensure_mount(client, "secret", "kv", version="2")
        _ensure_mount(client, transit_mount, "transit", version=None)
        _ensure_transit_key(client, transit_mount, key_name)
        for purpose in Purpose:
            _ensure_transit_key(
                client, transit_mount, f"{signing_key_prefix}{purpose.value}", derived=False
            )
    finally:
        client.adapter.close()


def _mounts(client: hvac.Client) -> dict[str, dict[str, Any]]:
    body: dict[str, Any] = client.sys.list_mounted_secrets_engines()  # type: ignore[no-untyped-call]  # untyped in types-hvac
    table: dict[str, Any] = body.get("data", body)  # older servers answer without "data"
    return {path.strip("/"): m for path, m in table.items() if isinstance(m, dict)}


def _ensure_mount(client: hvac.Client, path: str, engine: str, *, version: str | None) -> None:
    mount = _mounts(client).get(path)
    if mount is None:
        options = {"version": version} if version else None
        # "path is already in use" means a concurrent bootstrap won; verified below.
        with contextlib.suppress(hvac.exceptions.InvalidRequest):
            client.sys.enable_secrets_engine(engine, path=path, options=options)
        mount = _mounts(client).get(path)
    if mount is None:
        raise VaultBootstrapError(f"mount {path}/ did not appear after enabling {engine}")
    kind = mount.get("type")
    found_version = str((mount.get("options") or {}).get("version", "1"))
    if kind == "kv-v2":
        kind, found_version = "kv", "2"
    if kind != engine or (version is not None and found_version != version):
        wanted = f"{engine} v{version}" if version else engine
        raise VaultBootstrapError(f"{path}/ is a {kind} v{found_version} mount, not {wanted}")


def _ensure_transit_key(
    client: hvac.Client, mount: str, name: str, *, derived: bool = True
) -> None:
    transit = client.secrets.transit
    try:
        key: dict[str, Any] = transit.read_key(name=name, mount_point=mount)  # type: ignore[no-untyped-call]  # untyped in types-hvac
    except hvac.exceptions.InvalidPath:
        # Creating a key that already exists is a no-op, so a concurrent bootstrap is fine.
        transit.create_key(  # type: ignore[no-untyped-call]  # untyped in types-hvac
            name=name, key_type="aes256-gcm96", derived=derived, mount_point=mount
        )
        key = transit.read_key(name=name, mount_point=mount)  # type: ignore[no-untyped-call]  # untyped in types-hvac
    data = key["data"]
    if data.get("type") != "aes256-gcm96" or bool(data.get("derived")) != derived:
        raise VaultBootstrapError(
            f"transit key {mount}/{name} is {data.get('type')} derived={data.get('derived')},"
            f" not aes256-gcm96 derived={derived}"
        )
    if data.get("exportable") or data.get("allow_plaintext_backup"):
        raise VaultBootstrapError(f"transit key {mount}/{name} may be exported or backed up")
