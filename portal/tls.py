"""The portal's TLS certificate: the configured one, or a self-signed one made on first start."""

from __future__ import annotations

import ipaddress
import os
import threading
from datetime import timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ecpds.core.models import utcnow
from ecpds.core.settings import Settings


def _subject_names(names: list[str]) -> list[x509.GeneralName]:
    found: list[x509.GeneralName] = []
    for name in dict.fromkeys(names):
        try:
            found.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            found.append(x509.DNSName(name))
    return found


# Front ends start together and each asks for the certificate: only one may create it.
_creating = threading.Lock()


def ensure_certificate(settings: Settings) -> tuple[Path, Path]:
    """(certificate, key) files; a self-signed pair is written when neither exists."""
    with _creating:
        return _ensure_certificate(settings)


def _ensure_certificate(settings: Settings) -> tuple[Path, Path]:
    cert_file, key_file = settings.cert_file, settings.cert_key_file
    if cert_file.exists() and key_file.exists():
        return cert_file, key_file
    if settings.tls_cert is not None or settings.tls_key is not None:
        missing = cert_file if not cert_file.exists() else key_file
        raise FileNotFoundError(f"configured TLS file {missing} does not exist")
    key = ec.generate_private_key(ec.SECP256R1())
    names = [settings.public_host, "localhost", "127.0.0.1"]
    if settings.bind not in ("0.0.0.0", "::"):
        names.append(settings.bind)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, settings.public_host)])
    now = utcnow()
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=3650))
        .add_extension(x509.SubjectAlternativeName(_subject_names(names)), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_file.parent.mkdir(parents=True, exist_ok=True)
    cert_file.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert_file, key_file
