"""lbsync.certwatch: the certificate files polled on the loop's clock, a changed file sent
to HAProxy once, a refused one logged once and the old certificate kept."""

from __future__ import annotations

import logging
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from lbsync.certwatch import CertWatch
from lbsync.haproxy.certs import CertError, CertInfo, fingerprint, listed
from lbsync.loop import CERT_POLL_INTERVAL, Loop
from lbsync.metrics import Metrics
from lbsync.model import LbsyncError
from lbsync.registry import Registry
from tests.rig.certs import make_pem
from tests.unit.test_loop import FakeClock, FakePass


class FakeCerts:
    """HAProxy's certificate store: what it serves per file; refuses what `refuse` says."""

    def __init__(self) -> None:
        self.served: dict[str, str] = {}
        self.replaced: list[str] = []
        self.infos: list[str] = []
        self.refuse: str | None = None
        self.down = False

    def info(self, filename: str) -> CertInfo:
        self.infos.append(filename)
        if self.down:
            raise LbsyncError("runtime API at admin.sock: connection refused")
        if filename not in self.served:
            raise CertError(f"HAProxy has no certificate {filename}")
        return self._info(filename, self.served[filename])

    def replace(self, filename: str, pem: str) -> CertInfo:
        if self.down:
            raise LbsyncError("runtime API at admin.sock: connection refused")
        self.replaced.append(filename)
        if self.refuse:
            raise CertError(f"HAProxy refused the new certificate for {filename}: "
                            f"{self.refuse}")
        self.served[filename] = pem
        return self._info(filename, pem)

    @staticmethod
    def _info(filename: str, pem: str) -> CertInfo:
        now = datetime(2026, 1, 1, tzinfo=UTC)
        return CertInfo(filename, "/CN=x", "/CN=x", "01", now, now + timedelta(days=30),
                        ("localhost",), fingerprint(pem))


def write(path: Path, pem: str) -> None:
    """Like a deploy tool: a new file renamed over the old one."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(pem)
    os.replace(tmp, path)


@pytest.fixture
def pem(tmp_path: Path) -> Path:
    path = tmp_path / "site.pem"
    path.write_text(make_pem("first"))
    return path


@pytest.fixture
def certs(pem: Path) -> FakeCerts:
    fake = FakeCerts()
    fake.served[str(pem)] = pem.read_text()  # HAProxy started from the file
    return fake


def loop_with(tmp_path: Path, watch: CertWatch) -> tuple[Loop, FakeClock]:
    registry = Registry(tmp_path / "nodes")
    registry.root.mkdir()
    clock = FakeClock()
    return Loop(registry, FakePass(), Metrics(), clock, serf=False, resync_interval=30.0,
                certs=watch), clock


def test_the_file_haproxy_already_serves_is_not_sent(pem: Path, certs: FakeCerts) -> None:
    watch = CertWatch(lambda: [pem], certs)
    assert watch.poll() == []
    assert certs.infos == [str(pem)] and certs.replaced == []
    assert watch.poll() == []
    assert certs.infos == [str(pem)], "an unchanged file costs a stat, not a question"


def test_a_changed_file_is_rotated_once_on_the_loops_clock(tmp_path: Path, pem: Path,
                                                           certs: FakeCerts) -> None:
    watch = CertWatch(lambda: [pem], certs)
    loop, clock = loop_with(tmp_path, watch)
    loop.handle([], 0.0)
    assert loop.timeout(0.0) <= CERT_POLL_INTERVAL
    second = make_pem("second")
    write(pem, second)
    loop.handle([], CERT_POLL_INTERVAL / 2)  # too soon: not looked at
    assert certs.replaced == []
    loop.handle([], CERT_POLL_INTERVAL)
    assert certs.replaced == [str(pem)] and certs.served[str(pem)] == second
    for t in (2, 3, 4):
        loop.handle([], t * CERT_POLL_INTERVAL)
    assert certs.replaced == [str(pem)] and watch.rotations == 1


def test_a_file_that_changed_while_the_agent_was_down_is_sent_at_start(
        pem: Path, certs: FakeCerts) -> None:
    write(pem, make_pem("newer"))
    assert CertWatch(lambda: [pem], certs).poll() == [pem]
    assert certs.served[str(pem)] == pem.read_text()


def test_a_refused_certificate_is_one_error_and_the_old_one_stays(
        pem: Path, certs: FakeCerts, caplog: pytest.LogCaptureFixture) -> None:
    watch = CertWatch(lambda: [pem], certs)
    watch.poll()
    old = certs.served[str(pem)]
    certs.refuse = "inconsistencies between private key and certificate"
    write(pem, make_pem("mismatched"))
    with caplog.at_level(logging.INFO, "lbsync.certs"):
        for _ in range(3):
            assert watch.poll() == []
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1, "refused once, not on every poll"
    assert str(pem) in errors[0].getMessage()
    assert "inconsistencies between private key" in errors[0].getMessage()
    assert "keeps serving /CN=x" in errors[0].getMessage()
    assert certs.served[str(pem)] == old and certs.replaced == [str(pem)]
    certs.refuse = None  # the operator fixes the file: the next change goes through
    write(pem, make_pem("fixed"))
    assert watch.poll() == [pem]


@pytest.mark.parametrize("content", ["", "garbage", "cert only"])
def test_a_file_that_is_no_pem_with_a_key_is_not_sent(
        pem: Path, certs: FakeCerts, content: str, caplog: pytest.LogCaptureFixture) -> None:
    watch = CertWatch(lambda: [pem], certs)
    watch.poll()
    if content == "cert only":
        content = make_pem("x").split("-----BEGIN PRIVATE KEY")[0]
    write(pem, content)
    with caplog.at_level(logging.ERROR, "lbsync.certs"):
        assert watch.poll() == [] and watch.poll() == []
    assert certs.replaced == []
    assert len(caplog.records) == 1 and "not rotated" in caplog.records[0].getMessage()


def test_haproxy_down_is_no_verdict_the_next_poll_retries(pem: Path, certs: FakeCerts) -> None:
    watch = CertWatch(lambda: [pem], certs)
    watch.poll()
    write(pem, make_pem("second"))
    certs.down = True
    assert watch.poll() == [] and watch.poll() == []
    certs.down = False
    assert watch.poll() == [pem]


def test_a_folder_rotates_each_file_and_leaves_a_new_one_for_the_reload(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    folder = tmp_path / "certs"
    folder.mkdir()
    certs = FakeCerts()
    for name in ("a", "b"):
        (folder / f"{name}.pem").write_text(make_pem(name))
        certs.served[str(folder / f"{name}.pem")] = (folder / f"{name}.pem").read_text()
    watch = CertWatch(lambda: listed(folder), certs)
    assert watch.poll() == []
    write(folder / "b.pem", make_pem("b2"))
    (folder / "c.pem").write_text(make_pem("c"))
    with caplog.at_level(logging.WARNING, "lbsync.certs"):
        assert watch.poll() == [folder / "b.pem"]
    assert [r.getMessage() for r in caplog.records if "c.pem" in r.getMessage()]
    assert certs.replaced == [str(folder / "b.pem")]


def test_a_crashing_poll_does_not_stop_the_loop(tmp_path: Path,
                                                caplog: pytest.LogCaptureFixture) -> None:
    class Broken:
        calls = 0

        def poll(self) -> None:
            self.calls += 1
            raise RuntimeError("bug")

    broken = Broken()
    registry = Registry(tmp_path / "nodes")
    registry.root.mkdir()
    passes = FakePass()
    loop = Loop(registry, passes, Metrics(), FakeClock(), serf=False, resync_interval=30.0,
                certs=broken)
    with caplog.at_level(logging.ERROR, "lbsync.loop"):
        loop.handle([], 0.0)
        loop.handle([], CERT_POLL_INTERVAL)
    assert broken.calls == 2 and passes.calls == [0.0]
    assert "certificate poll crashed" in caplog.text


def test_the_daemon_watches_the_tls_cert_only_when_set(tmp_path: Path, pem: Path) -> None:
    import dataclasses

    from lbsync.daemon import cert_watch
    from lbsync.settings import Settings

    assert cert_watch(Settings()) is None
    watch = cert_watch(dataclasses.replace(Settings(), tls_cert=tmp_path,
                                           runtime_socket=str(tmp_path / "admin.sock")))
    assert watch is not None
    assert watch.files() == [pem]  # the folder, listed on each poll
    (tmp_path / "other.pem").write_text(make_pem("other"))
    assert watch.files() == [tmp_path / "other.pem", pem]


def _blocks(pem: str) -> tuple[str, str]:
    """(the CERTIFICATE block, the PRIVATE KEY block) of a PEM."""
    cert = pem[pem.index("-----BEGIN CERTIFICATE-----"):pem.index("-----END CERTIFICATE-----")]
    key = pem[pem.index("-----BEGIN PRIVATE KEY-----"):pem.index("-----END PRIVATE KEY-----")]
    return (cert + "-----END CERTIFICATE-----\n", key + "-----END PRIVATE KEY-----\n")


def test_a_new_key_beside_the_served_certificate_is_sent_and_its_refusal_logged(
        pem: Path, certs: FakeCerts, caplog: pytest.LogCaptureFixture) -> None:
    watch = CertWatch(lambda: [pem], certs)
    watch.poll()  # the agent's start: the served certificate is not sent again
    assert certs.replaced == []
    cert, _ = _blocks(pem.read_text())
    _, other_key = _blocks(make_pem("other"))
    certs.refuse = "inconsistencies between private key and certificate"
    write(pem, cert + other_key)  # the same certificate, another key
    with caplog.at_level(logging.ERROR, "lbsync.certs"):
        assert watch.poll() == []
    assert certs.replaced == [str(pem)], "sent, so HAProxy checks the key now"
    assert "inconsistencies between private key" in caplog.text


def test_a_touched_file_is_not_sent_again(pem: Path, certs: FakeCerts) -> None:
    watch = CertWatch(lambda: [pem], certs)
    watch.poll()
    write(pem, make_pem("second"))
    assert watch.poll() == [pem]
    os.utime(pem, ns=(1, 1))  # a touch: the stat changes, the text does not
    assert watch.poll() == [] and certs.replaced == [str(pem)]


def test_haproxy_down_during_a_change_is_retried_with_the_same_text(
        pem: Path, certs: FakeCerts) -> None:
    watch = CertWatch(lambda: [pem], certs)
    watch.poll()
    write(pem, make_pem("second"))
    certs.down = True
    assert watch.poll() == []
    certs.down = False
    assert watch.poll() == [pem], "the unchanged file is tried again once HAProxy answers"
