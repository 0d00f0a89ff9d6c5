"""bench/wampload.py's TLS option: wss:// verifies against --cafile, ws:// takes none."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from bench.wampload import tls_context
from lbsync.cluster.tls import ensure


def test_ws_has_no_tls_context() -> None:
    assert tls_context("ws://127.0.0.1:8080/ws", None) is None


def test_a_cafile_on_ws_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="wss://"):
        tls_context("ws://127.0.0.1:8080/ws", tmp_path / "ca.pem")


def test_wss_verifies_the_name_and_the_chain_against_the_cafile(tmp_path: Path) -> None:
    ca = ensure(tmp_path, ["localhost"]).ca_cert
    ctx = tls_context("wss://127.0.0.1:8443/ws", ca)
    assert ctx is not None
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    assert [c["subject"] for c in ctx.get_ca_certs()] == [
        ((("commonName", "lbsync local CA"),), (("organizationName", "lbsync"),))]


def test_wss_without_a_cafile_trusts_the_system() -> None:
    ctx = tls_context("wss://example.org/ws", None)
    assert ctx is not None and ctx.verify_mode == ssl.CERT_REQUIRED


def test_a_missing_cafile_fails(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        tls_context("wss://127.0.0.1:8443/ws", tmp_path / "absent.pem")
