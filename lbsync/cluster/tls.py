"""A local certificate authority for `lbsync up --tls`: try https:// and wss:// at once.

The CA (ca.pem, ca.key) and the frontend's certificate (tls/site.pem: certificate then key,
as HAProxy's `crt` wants) live in the cluster folder; keys are 0600. A client trusts the
cluster with `curl --cacert ca.pem`. The CA is made once and kept, so a client that trusts
it keeps trusting the cluster across `lbsync up`; the site certificate is issued again
whenever it is missing, its names changed, or it expires within RENEW_BEFORE.

Needs the `cryptography` package, which the edge extra brings (Crossbar depends on it).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from ..files import atomic_write
from ..model import LbsyncError

CA_DAYS = 3650
SITE_DAYS = 90
RENEW_BEFORE = timedelta(days=30)


class TLSError(LbsyncError):
    pass


@dataclass(frozen=True)
class LocalTLS:
    ca_cert: Path  # what clients trust (curl --cacert)
    ca_key: Path
    site_pem: Path  # certificate + key, for HAProxy's `bind ... ssl crt`


def paths(folder: Path) -> LocalTLS:
    return LocalTLS(folder / "ca.pem", folder / "ca.key", folder / "site.pem")


def ensure(folder: Path, names: list[str], *, now: datetime | None = None) -> LocalTLS:
    """Make the CA unless it exists, and a site certificate for `names` (DNS names or IP
    addresses) unless a valid one for the same names exists."""
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
    except ImportError:
        raise TLSError("--tls needs the 'cryptography' package (pip install 'lbsync[edge]')") \
            from None
    if not names:
        raise TLSError("a certificate needs at least one name")
    now = now or datetime.now(UTC)
    p = paths(folder)
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o700)

    def pem_key(key: ec.EllipticCurvePrivateKey) -> str:
        return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption()).decode()

    def pem_cert(cert: x509.Certificate) -> str:
        return cert.public_bytes(serialization.Encoding.PEM).decode()

    if p.ca_cert.exists() and p.ca_key.exists():
        try:
            ca = x509.load_pem_x509_certificate(p.ca_cert.read_bytes())
            ca_key = serialization.load_pem_private_key(p.ca_key.read_bytes(), None)
        except ValueError as e:
            raise TLSError(f"the local CA in {folder} cannot be read ({e}): remove ca.pem and "
                           "ca.key to make a new one (clients must then trust the new one)") \
                from None
        if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
            raise TLSError(f"{p.ca_key} is not the EC key lbsync makes")
    else:
        ca_key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "lbsync local CA"),
                          x509.NameAttribute(NameOID.ORGANIZATION_NAME, "lbsync")])
        ca = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
              .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
              .not_valid_before(now - timedelta(minutes=5))
              .not_valid_after(now + timedelta(days=CA_DAYS))
              .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
              .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
                             critical=False)
              .add_extension(x509.KeyUsage(
                  digital_signature=False, content_commitment=False, key_encipherment=False,
                  data_encipherment=False, key_agreement=False, key_cert_sign=True,
                  crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
              .sign(ca_key, hashes.SHA256()))
        atomic_write(p.ca_key, pem_key(ca_key), mode=0o600)
        atomic_write(p.ca_cert, pem_cert(ca), mode=0o644)
        p.site_pem.unlink(missing_ok=True)  # issued by a CA that is gone

    sans: list[x509.GeneralName] = []
    for n in names:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(n)))
        except ValueError:
            sans.append(x509.DNSName(n))
    if p.site_pem.exists():
        try:
            site = x509.load_pem_x509_certificate(p.site_pem.read_bytes())
            have = site.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            if (set(have) == set(sans) and site.issuer == ca.subject
                    and site.not_valid_after_utc - RENEW_BEFORE > now):
                return p
        except (ValueError, x509.ExtensionNotFound):
            pass  # unreadable or foreign: issue a new one
    key = ec.generate_private_key(ec.SECP256R1())
    site = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
            .issuer_name(ca.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + timedelta(days=SITE_DAYS))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
            # Strict verifiers (the web PKI profile) want the key identifiers.
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                ca_key.public_key()), False)
            .sign(ca_key, hashes.SHA256()))
    atomic_write(p.site_pem, pem_cert(site) + pem_key(key), mode=0o600)
    return p
