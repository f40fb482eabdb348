"""Which certificates outgoing HTTPS trusts (HubSpot, webhook receivers, JWKS, TokenReview).

By default the public CAs that httpx ships with (certifi). ``BROKER_CA_BUNDLE`` adds a PEM
bundle of private CAs on top of those — for a TLS-inspecting egress proxy in front of HubSpot,
or receivers and issuers signed by a company CA — rather than replacing them, so HubSpot keeps
working when the bundle holds only the company's CA. ``SSL_CERT_FILE`` and ``SSL_CERT_DIR``,
when set (the OpenSSL variables httpx honoured), add their CAs the same way. A per-issuer
``ca_file`` (JWKS, TokenReview) still trusts exactly that file.
"""

from __future__ import annotations

import os
import ssl
from functools import cache
from pathlib import Path

import certifi


@cache
def _context(ca_bundle: str, only: bool) -> ssl.SSLContext:
    if only:
        return ssl.create_default_context(cafile=ca_bundle)
    context = _public_cas()
    context.load_verify_locations(cafile=ca_bundle)
    return context


def _public_cas() -> ssl.SSLContext:
    """certifi's CAs, plus ``SSL_CERT_FILE``/``SSL_CERT_DIR`` when they name a file/folder
    (ignored otherwise, as httpx did)."""
    context = ssl.create_default_context(cafile=certifi.where())
    cafile, capath = os.environ.get("SSL_CERT_FILE"), os.environ.get("SSL_CERT_DIR")
    if cafile and Path(cafile).is_file():
        context.load_verify_locations(cafile=cafile)
    if capath and Path(capath).is_dir():
        context.load_verify_locations(capath=capath)
    return context


@cache
def _public() -> ssl.SSLContext:
    return _public_cas()


def context(ca_bundle: str = "") -> ssl.SSLContext:
    """:func:`verify` as an ``ssl`` context, for clients that take only a context (the public
    CAs plus ``ca_bundle``, as :func:`verify` gives httpx)."""
    return _context(ca_bundle, only=False) if ca_bundle else _public()


def verify(ca_bundle: str = "", ca_file: str | None = None) -> ssl.SSLContext | bool:
    """httpx's ``verify=`` for a client: ``ca_file`` alone, else the public CAs plus
    ``ca_bundle``, else the public CAs. Contexts are made once per bundle (loading a bundle
    costs milliseconds) and re-read only by a restart."""
    if ca_file:
        return _context(ca_file, only=True)
    return _context(ca_bundle, only=False) if ca_bundle else True
