"""lbsync.cluster.tls: the local CA and the frontend certificate of `lbsync up --tls`."""

from __future__ import annotations

import ipaddress
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.verification import PolicyBuilder, Store

from lbsync.cluster import tls

NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)


def load(pem: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem.read_bytes())


def verify(p: tls.LocalTLS, name: x509.GeneralName, at: datetime = NOW) -> None:
    """What a client that trusts ca.pem does: raises unless the chain and the name hold."""
    verifier = (PolicyBuilder().store(Store([load(p.ca_cert)])).time(at)
                .build_server_verifier(name))
    verifier.verify(load(p.site_pem), [])


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_client_that_trusts_the_ca_accepts_every_name(tmp_path: Path) -> None:
    p = tls.ensure(tmp_path / "tls", ["localhost", "127.0.0.1"], now=NOW)
    verify(p, x509.DNSName("localhost"))
    verify(p, x509.IPAddress(ipaddress.ip_address("127.0.0.1")))
    with pytest.raises(Exception, match="(?i)mismatch|name"):
        verify(p, x509.DNSName("elsewhere.example"))
    # HAProxy's `crt` file: the certificate, then its key.
    text = p.site_pem.read_text()
    assert text.index("BEGIN CERTIFICATE") < text.index("BEGIN PRIVATE KEY")


def test_keys_are_0600_in_a_0700_folder(tmp_path: Path) -> None:
    p = tls.ensure(tmp_path / "tls", ["localhost"], now=NOW)
    assert mode(p.ca_key) == 0o600 and mode(p.site_pem) == 0o600
    assert mode(p.ca_cert) == 0o644  # clients read it
    assert mode(tmp_path / "tls") == 0o700


def test_a_second_run_keeps_both(tmp_path: Path) -> None:
    p = tls.ensure(tmp_path / "tls", ["localhost"], now=NOW)
    before = {f: f.read_bytes() for f in (p.ca_cert, p.ca_key, p.site_pem)}
    tls.ensure(tmp_path / "tls", ["localhost"], now=NOW + timedelta(days=1))
    assert {f: f.read_bytes() for f in before} == before


def test_new_names_or_near_expiry_issue_a_new_site_certificate_from_the_same_ca(
        tmp_path: Path) -> None:
    p = tls.ensure(tmp_path / "tls", ["localhost"], now=NOW)
    ca, site = p.ca_cert.read_bytes(), p.site_pem.read_bytes()
    tls.ensure(tmp_path / "tls", ["localhost", "lb.test"], now=NOW)
    assert p.ca_cert.read_bytes() == ca and p.site_pem.read_bytes() != site
    verify(p, x509.DNSName("lb.test"))
    site = p.site_pem.read_bytes()
    later = NOW + timedelta(days=tls.SITE_DAYS) - tls.RENEW_BEFORE + timedelta(hours=1)
    tls.ensure(tmp_path / "tls", ["localhost", "lb.test"], now=later)
    assert p.site_pem.read_bytes() != site
    verify(p, x509.DNSName("lb.test"), at=later + timedelta(days=60))


def test_an_unreadable_ca_is_one_clear_error_and_is_not_replaced(tmp_path: Path) -> None:
    p = tls.ensure(tmp_path / "tls", ["localhost"], now=NOW)
    p.ca_cert.write_text("not a certificate\n")
    with pytest.raises(tls.TLSError, match="local CA .* cannot be read.*remove ca.pem"):
        tls.ensure(tmp_path / "tls", ["localhost"], now=NOW)
    assert p.ca_cert.read_text() == "not a certificate\n"


def test_no_name_is_refused(tmp_path: Path) -> None:
    with pytest.raises(tls.TLSError, match="at least one name"):
        tls.ensure(tmp_path / "tls", [], now=NOW)
