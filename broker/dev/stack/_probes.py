"""Readiness probes: each True only once its server answers a real request."""

from __future__ import annotations

import http.client
import socket
import subprocess
from pathlib import Path

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from broker.dev.stack._common import HOST
from broker.dev.stack._processes import clean_env


def tcp_accepts(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=1):
            return True
    except OSError:
        return False


def valkey_pongs(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=1) as conn:
            conn.sendall(b"*1\r\n$4\r\nPING\r\n")
            return conn.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def bao_healthy(port: int) -> bool:
    conn = http.client.HTTPConnection(HOST, port, timeout=2)
    try:
        conn.request("GET", "/v1/sys/health")
        return conn.getresponse().status == 200  # initialized, unsealed and active
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()


def psql(bin_dir: Path, port: int, sql: str) -> str | None:
    """``sql``'s output as the ``postgres`` superuser, or None when it did not run."""
    dsn = f"host={HOST} port={port} user=postgres dbname=postgres connect_timeout=2"
    try:
        result = subprocess.run(
            [str(bin_dir / "psql"), "-X", "-A", "-t", "-w", "-d", dsn, "-c", sql],
            capture_output=True,
            env=clean_env(),
            timeout=10,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return None
    return result.stdout.decode().strip() if result.returncode == 0 else None


def postgres_answers(bin_dir: Path, port: int) -> bool:
    return tcp_accepts(port) and psql(bin_dir, port, "select 1") == "1"


def streams_synchronously(bin_dir: Path, primary_port: int) -> bool:
    """The primary has a standby confirming every commit (``sync_state = sync``)."""
    found = psql(
        bin_dir,
        primary_port,
        "select count(*) from pg_stat_replication"
        " where sync_state = 'sync' and state = 'streaming'",
    )
    return found is not None and found != "0"


def _redis(port: int) -> redis.Redis:
    return redis.Redis(
        host=HOST,
        port=port,
        socket_timeout=1,
        socket_connect_timeout=1,
        retry=Retry(NoBackoff(), 0),
    )


def replica_in_sync(port: int) -> bool:
    """A Valkey replica connected to its master."""
    try:
        with _redis(port) as client:
            return bool(client.info("replication").get("master_link_status") == "up")
    except redis.RedisError:
        return False


def sentinel_sees_all(port: int, *, sentinels: int, master: str) -> bool:
    """A sentinel knows the master, its replica and every other sentinel: a failover can
    be agreed on."""
    try:
        with _redis(port) as client:
            replicas = client.sentinel_slaves(master)
            others = client.sentinel_sentinels(master)
    except redis.RedisError:
        return False
    return len(replicas) >= 1 and len(others) >= sentinels - 1
