"""Certificates for TLS tests: a throwaway CA and server certificates it signs, as PEM files
(``cryptography``, already a dependency through PyJWT)."""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


@dataclass(frozen=True)
class CertificateAuthority:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey
    pem: Path

    @classmethod
    def create(cls, directory: Path, name: str = "test CA") -> CertificateAuthority:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256())
        )
        directory.mkdir(parents=True, exist_ok=True)
        pem = directory / "ca.pem"
        pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return cls(cert, key, pem)

    def issue(self, cert_path: Path, key_path: Path, *, serial: int) -> None:
        """A server certificate for 127.0.0.1 and localhost, written in place (key first,
        then certificate, each replaced atomically)."""
        cert_pem, key_pem = self.pair(serial)
        replace_file(key_path, key_pem)
        replace_file(cert_path, cert_pem)

    def pair(self, serial: int) -> tuple[bytes, bytes]:
        """(certificate, key) PEM of a server certificate for 127.0.0.1 and localhost."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(serial)
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                ),
                critical=False,
            )
            .sign(self.key, hashes.SHA256())
        )
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        return cert.public_bytes(serialization.Encoding.PEM), key_pem


def replace_file(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` by rename, as a rotating mount does."""
    staging = path.with_suffix(path.suffix + ".new")
    staging.write_bytes(data)
    os.replace(staging, path)
