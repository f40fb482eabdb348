"""Adapters: one module (or package) per backend, each implementing ports from ``core.ports``."""

import importlib.util
import sys

# httpcore (httpx's transport) runs ``import sniffio`` inside every request to learn the
# event loop. anyio no longer installs sniffio, and a failed import is not remembered: each
# request then scans sys.path again (stat calls, about half a millisecond of CPU per HTTP
# request to Vault or HubSpot). Recording it as absent makes that import fail at once, and
# httpcore falls back to asyncio, which is what runs here.
if importlib.util.find_spec("sniffio") is None:
    sys.modules["sniffio"] = None  # type: ignore[assignment]
