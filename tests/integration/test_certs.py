"""Certificates rotated through a real HAProxy's Runtime API (2.6 and 3.0), no reload.

A TLS client is connected across each rotation: new connections get the new certificate,
the open one goes on with the old, and HAProxy's refusals (a key that does not match, a
file the config does not use, an expired certificate) leave the old one served.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID
from haproxy_fixtures import HAProxyBin

from lbsync.haproxy.certs import CertError, Certificates
from lbsync.haproxy.runtime import CLISession, RuntimeAPI, parse_address
from tests.rig.certs import make_pem
from tests.rig.procs import free_port, reap, wait_for

pytestmark = pytest.mark.integration

ADDR = "127.158.0.1"  # this module's own loopback address

CONFIG = """\
global
    stats socket {sock} mode 600 level admin
defaults
    mode http
    timeout connect 2s
    timeout client 10s
    timeout server 10s
frontend tls
    bind {addr}:{port} ssl crt {pem} alpn h2,http/1.1
    http-request return status 200 content-type text/plain string ok
"""


@dataclass
class TLSRig:
    pem: Path
    port: int
    certs: Certificates
    process: subprocess.Popen[bytes]

    def served_cn(self) -> str:
        """The CN of the certificate a new TLS connection gets."""
        with self.connect() as conn:
            return common_name(conn)

    def connect(self) -> ssl.SSLSocket:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        raw = socket.create_connection((ADDR, self.port), timeout=5)
        return ctx.wrap_socket(raw, server_hostname="localhost")


def common_name(conn: ssl.SSLSocket) -> str:
    der = conn.getpeercert(binary_form=True)
    assert der is not None
    cert = x509.load_der_x509_certificate(der)
    return str(cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


def get_ok(conn: ssl.SSLSocket) -> bool:
    conn.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
    return conn.recv(4096).startswith(b"HTTP/1.1 200")


@pytest.fixture
def tls_rig(haproxy_bin: HAProxyBin, tmp_path: Path) -> Iterator[TLSRig]:
    sock_dir = Path(tempfile.mkdtemp(prefix="lbsync-tls-"))  # short unix socket path
    pem = tmp_path / "site.pem"
    pem.write_text(make_pem("first"))
    port = free_port(ADDR)
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(CONFIG.format(sock=sock_dir / "admin.sock", addr=ADDR, port=port, pem=pem))
    log = (tmp_path / "haproxy.log").open("wb")
    process = subprocess.Popen([haproxy_bin.path, "-db", "-f", str(cfg)], stdout=log,
                               stderr=subprocess.STDOUT)
    try:
        runtime = RuntimeAPI(str(sock_dir / "admin.sock"))

        def answers() -> bool:
            assert process.poll() is None, (tmp_path / "haproxy.log").read_text()
            runtime.version()
            return True

        wait_for(answers, 10, "HAProxy's runtime API")
        yield TLSRig(pem, port, Certificates(str(sock_dir / "admin.sock")), process)
    finally:
        reap(process, 5)
        log.close()
        with contextlib.suppress(OSError):
            (sock_dir / "admin.sock").unlink()
        sock_dir.rmdir()


def test_rotation_serves_the_new_certificate_and_keeps_the_open_connection(
        tls_rig: TLSRig) -> None:
    assert tls_rig.certs.files() == [str(tls_rig.pem)]
    assert tls_rig.certs.info(str(tls_rig.pem)).subject == "/CN=first"
    held = tls_rig.connect()
    try:
        assert common_name(held) == "first" and get_ok(held)
        info = tls_rig.certs.replace(str(tls_rig.pem), make_pem("second", days=90))
        assert info.subject == "/CN=second"
        assert 89 * 86400 < info.expires_in(datetime.now(UTC)) < 90 * 86400
        assert tls_rig.served_cn() == "second"
        assert get_ok(held), "the connection opened before the rotation was cut"
    finally:
        held.close()
    assert tls_rig.process.poll() is None  # the same process throughout: no reload, no restart


@pytest.mark.parametrize("bad, reason", [
    ("mismatched", "inconsistencies between private key and certificate"),
    ("garbage", "unable to load"),
    ("expired", "refusing the new certificate for .*: it expired on"),
    ("future", "refusing the new certificate for .*: it is not valid before"),
])
def test_a_bad_certificate_is_refused_and_the_old_one_stays(
        tls_rig: TLSRig, bad: str, reason: str) -> None:
    cert_part = make_pem("mismatched").split("-----BEGIN PRIVATE KEY-----")[0]
    other_key = make_pem("x").split("-----END CERTIFICATE-----\n")[1]
    pem = {
        "mismatched": cert_part + other_key,  # a certificate with another one's key
        "garbage": "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n",
        "expired": make_pem("expired", days=1,
                            start=datetime.now(UTC) - timedelta(days=3)),
        "future": make_pem("future", start=datetime.now(UTC) + timedelta(days=3)),
    }[bad]
    with pytest.raises(CertError, match=reason):
        tls_rig.certs.replace(str(tls_rig.pem), pem)
    assert tls_rig.served_cn() == "first"
    # No transaction left open: the next good rotation goes through.
    assert tls_rig.certs.replace(str(tls_rig.pem), make_pem("good")).subject == "/CN=good"
    assert tls_rig.served_cn() == "good"


def test_a_file_the_config_does_not_use_is_refused(tls_rig: TLSRig) -> None:
    with pytest.raises(CertError, match="not referenced by the configuration"):
        tls_rig.certs.replace(str(tls_rig.pem.with_name("other.pem")), make_pem("other"))
    with pytest.raises(CertError, match="has no certificate"):
        tls_rig.certs.info(str(tls_rig.pem.with_name("other.pem")))
    assert tls_rig.served_cn() == "first"


def test_a_payload_with_an_empty_line_is_not_sent(tls_rig: TLSRig) -> None:
    with CLISession(parse_address(tls_rig.certs.address.text), 5) as session:
        with pytest.raises(ValueError, match="empty line inside a payload"):
            session.command_with_payload(f"set ssl cert {tls_rig.pem}", "line one\n\nshow info")
        # The session is still framed: the next command answers normally.
        assert "Name: HAProxy" in session.command("show info")
