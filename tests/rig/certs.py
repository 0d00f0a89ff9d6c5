"""Test certificates (the `cryptography` package): a PEM holding a certificate and its key,
and what a TLS server serves, read back."""

from __future__ import annotations

import socket
import ssl
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def make_pem(cn: str, *, days: int = 30, start: datetime | None = None,
             key: ec.EllipticCurvePrivateKey | None = None,
             signing_key: ec.EllipticCurvePrivateKey | None = None,
             names: tuple[str, ...] = ("localhost",)) -> str:
    """A self-signed certificate for `cn` (SAN: `names`) and its key, as one PEM."""
    key = key or ec.generate_private_key(ec.SECP256R1())
    start = start or datetime.now(UTC) - timedelta(minutes=5)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(start + timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]),
                           False)
            .sign(signing_key or key, hashes.SHA256()))
    return (cert.public_bytes(serialization.Encoding.PEM).decode()
            + key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode())


def served_cert(host: str, port: int, server_name: str = "localhost") -> x509.Certificate:
    """The certificate a new TLS connection to host:port gets (not verified)."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with socket.create_connection((host, port), timeout=5) as raw, \
            ctx.wrap_socket(raw, server_hostname=server_name) as conn:
        der = conn.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def common_name(cert: x509.Certificate) -> str:
    return str(cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)
