"""Build the TypeScript client (clients/typescript) for the tests that run it: ``npm ci``
only when ``node_modules`` is missing or was installed from another lockfile, ``npm run
build`` only when a source changed; under a file lock, as two pytest-xdist workers may ask
at once."""

from __future__ import annotations

import fcntl
import functools
import hashlib
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

TS_DIR = Path(__file__).resolve().parent.parent / "clients" / "typescript"
NODE = shutil.which("node")
NPM = shutil.which("npm")

#: Applied to every test that runs Node.
needs_node = pytest.mark.skipif(
    NODE is None or NPM is None,
    reason="node and npm are not installed: the TypeScript client (clients/typescript) "
    "cannot be built or run",
)


def _run(*args: str) -> None:
    done = subprocess.run(
        args, cwd=TS_DIR, capture_output=True, text=True, timeout=600, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")


@functools.cache
def build() -> Path:
    """The built package's entry module (dist/src/index.js)."""
    assert NPM is not None
    lock = TS_DIR / "package-lock.json"
    stamp = TS_DIR / "node_modules" / ".lockfile-sha256"
    with (TS_DIR / ".build.lock").open("w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        wanted = hashlib.sha256(lock.read_bytes()).hexdigest()
        if not stamp.exists() or stamp.read_text() != wanted:
            _run(NPM, "ci", "--no-audit", "--no-fund")
            stamp.write_text(wanted)
        # Only when a source changed: another worker may be running the built files now.
        sources = sorted([*TS_DIR.glob("src/*.ts"), *TS_DIR.glob("test/*.ts")])
        digest = hashlib.sha256(wanted.encode())
        for path in [TS_DIR / "tsconfig.json", *sources]:
            digest.update(path.name.encode() + b"\0" + path.read_bytes())
        built = TS_DIR / "dist" / ".sources-sha256"
        if not built.exists() or built.read_text() != digest.hexdigest():
            _run(NPM, "run", "build")
            built.write_text(digest.hexdigest())
    return TS_DIR / "dist" / "src" / "index.js"


def node_test(env: dict[str, str]) -> str:
    """Run the client's own tests (``npm test``: ``node --test``) with ``env`` added; returns
    their TAP output after checking that every test in test/ ran and passed."""
    assert NPM is not None
    done = subprocess.run(
        [NPM, "test", "--silent"],
        cwd=TS_DIR,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    declared = sum(
        len(re.findall(r"^test\(", f.read_text(), re.MULTILINE))
        for f in (TS_DIR / "test").glob("*.test.ts")
    )
    summary = dict(re.findall(r"^# (pass|fail|skipped|todo|cancelled) (\d+)$", output, re.M))
    assert summary.get("pass") == str(declared), output  # `node --test` of nothing passes too
    assert summary.get("fail") == "0", output
    return output
