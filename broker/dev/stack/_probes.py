"""Readiness probes: each True only once its server answers a real request."""

from __future__ import annotations

import http.client
import socket
import subprocess
from pathlib import Path

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


def postgres_answers(bin_dir: Path, port: int) -> bool:
    if not tcp_accepts(port):
        return False
    dsn = f"host={HOST} port={port} user=postgres dbname=postgres connect_timeout=2"
    try:
        result = subprocess.run(
            [str(bin_dir / "psql"), "-X", "-A", "-t", "-w", "-d", dsn, "-c", "select 1"],
            capture_output=True,
            env=clean_env(),
            timeout=5,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return False
    return result.returncode == 0 and result.stdout.strip() == b"1"
