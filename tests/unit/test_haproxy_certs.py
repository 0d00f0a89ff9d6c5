"""lbsync.haproxy.certs: HAProxy's answers about certificates, as HAProxy 2.6 wrote them."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from lbsync.haproxy.certs import (
    CertError,
    Certificates,
    parse_cert_files,
    parse_cert_info,
    payload_of,
)

SHOW_CERT = """Filename: /tmp/tlsx/site.pem
Status: Used
Serial: 104D8BBD9F72B5521506A45CF7FD4BA816352258
notBefore: Dec  2 20:45:43 2026 GMT
notAfter: Jan  1 20:45:43 2027 GMT
Subject Alternative Name: DNS:localhost, DNS:lb.example,{sp}
Algorithm: EC256
SHA1 FingerPrint: B99085E731F540B1BB6F213B85E4EE5E60CE537E
Subject: /CN=lbsync-a
Issuer: /CN=lbsync-a
OCSP Response Key:{sp}
""".format(sp=" ")  # HAProxy ends these lines with a space

SHOW_LIST = """# transaction
*/tmp/tlsx/site.pem
# filename
/tmp/tlsx/site.pem
/tmp/tlsx/other.pem
"""


def test_show_ssl_cert_gives_subject_issuer_validity_and_names() -> None:
    info = parse_cert_info(SHOW_CERT)
    assert info.filename == "/tmp/tlsx/site.pem"
    assert (info.subject, info.issuer) == ("/CN=lbsync-a", "/CN=lbsync-a")
    assert info.not_before == datetime(2026, 12, 2, 20, 45, 43, tzinfo=UTC)
    assert info.not_after == datetime(2027, 1, 1, 20, 45, 43, tzinfo=UTC)
    assert info.dns_names == ("localhost", "lb.example")
    assert info.serial == "104D8BBD9F72B5521506A45CF7FD4BA816352258"
    assert info.expires_in(datetime(2027, 1, 1, 20, 45, 42, tzinfo=UTC)) == 1.0
    assert info.expires_in(datetime(2027, 1, 2, 20, 45, 43, tzinfo=UTC)) == -86400.0


def test_a_refusal_is_not_a_certificate() -> None:
    with pytest.raises(ValueError, match="no Filename, notBefore, notAfter, Subject"):
        parse_cert_info("Can't display the certificate: Not found or the certificate is a "
                        "bundle!\n")
    with pytest.raises(ValueError, match="notAfter 'soon' is not a time"):
        parse_cert_info(SHOW_CERT.replace("Jan  1 20:45:43 2027 GMT", "soon"))


def test_the_list_leaves_the_open_transaction_out() -> None:
    assert parse_cert_files(SHOW_LIST) == ["/tmp/tlsx/site.pem", "/tmp/tlsx/other.pem"]
    assert parse_cert_files("# filename\n") == []


def test_the_payload_has_no_blank_line_and_no_cr() -> None:
    pem = "-----BEGIN CERTIFICATE-----\r\nAAA\r\n-----END CERTIFICATE-----\r\n\r\n" \
          "-----BEGIN PRIVATE KEY-----\nBBB\n-----END PRIVATE KEY-----\n\n"
    assert payload_of(pem) == ("-----BEGIN CERTIFICATE-----\nAAA\n-----END CERTIFICATE-----\n"
                               "-----BEGIN PRIVATE KEY-----\nBBB\n-----END PRIVATE KEY-----")


@pytest.mark.parametrize("name", ["", "a b.pem", "x.pem;del server a/b", "x\n.pem"])
def test_a_file_name_that_would_smuggle_a_command_is_refused_before_connecting(
        name: str) -> None:
    # Port 9 on loopback: nothing is sent, so nothing needs to listen there.
    with pytest.raises(CertError, match="certificate file name"):
        Certificates("127.0.0.1:9").replace(name, "PEM")
