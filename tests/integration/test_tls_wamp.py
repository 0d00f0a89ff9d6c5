"""WAMP over wss:// for real: an autobahn client through HAProxy's TLS bind to a Crossbar
node of a devstack (HAProxy 2.6 and 3.0), the certificate verified through a local CA
(lbsync.cluster.tls); `lbsync agent` rotates the certificate under an open session with
no reload, and refuses a certificate HAProxy would not take.

Everything listens on 127.159.0.x (this module's devstack net).
"""

from __future__ import annotations

import asyncio
import ssl
import threading
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest
from cluster_rig import why_no_crossbar
from cryptography import x509
from haproxy_fixtures import HAProxyBin

from bench.edges import CrossbarMembers
from bench.wampload import Load, tls_context
from lbsync.cluster import tls as local_tls
from lbsync.cluster.addresses import TLS_PORT
from tests.rig.certs import make_pem, served_cert
from tests.rig.devstack import DevStack
from tests.rig.procs import wait_for

pytestmark = pytest.mark.integration

NET = 159  # nobody else uses 127.159.0.x
T = TypeVar("T")


@pytest.fixture(scope="module", autouse=True)
def _crossbar_runs() -> None:
    if (reason := why_no_crossbar()) is not None:
        pytest.skip(reason)


@dataclass
class TLSStack:
    stack: DevStack
    tls: local_tls.LocalTLS
    names: list[str]

    @property
    def url(self) -> str:
        return f"wss://{self.stack.lb_ip}:{TLS_PORT}/ws"

    def served_serial(self) -> int:
        return served_cert(self.stack.lb_ip, TLS_PORT, self.stack.lb_ip).serial_number

    def file_serial(self) -> int:
        return x509.load_pem_x509_certificate(self.tls.site_pem.read_bytes()).serial_number

    def reissue(self, extra_name: str) -> int:
        """A new site certificate from the same CA (another serial), written atomically
        over the file HAProxy serves; its serial."""
        local_tls.ensure(self.tls.site_pem.parent, [*self.names, extra_name])
        return self.file_serial()

    def refusals(self) -> int:
        return self.stack.log("agent").count("not rotated")


@pytest.fixture
def tls_stack(tmp_path: Path, haproxy_bin: HAProxyBin) -> Iterator[TLSStack]:
    stack = DevStack(tmp_path / "stack", net=NET, haproxy_bin=haproxy_bin.path)
    names = [stack.lb_ip, "localhost"]
    tls = local_tls.ensure(tmp_path / "tls", names)
    stack.flags = ["--tls-cert", str(tls.site_pem), "--tls-bind", f"{stack.lb_ip}:{TLS_PORT}"]
    edges = CrossbarMembers(stack)
    try:
        edges.start(1)  # the stack owns its process: stop() reaps it
        stack.start()
        edges.wait([1])
        stack.add_member(1, http=False)
        wait_for(lambda: stack.up_servers() == {"node1"}, 60, "node1 UP")
        wait_for(lambda: "start version=" in stack.log("agent"), 20, "the agent's start")
        yield TLSStack(stack, tls, names)
    finally:
        stack.stop()


class Client:
    """autobahn (bench/wampload.py's Load.open) on an event loop of its own thread, so the
    test holds a session while it does everything else."""

    def __init__(self, url: str, cafile: Path) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.load = Load(url, "realm1", 0.5, 10.0, tls=tls_context(url, cafile))
        self.transports: list[Any] = []

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 20) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def join(self, cid: int) -> tuple[Any, asyncio.Future[str]]:
        session, ended, transport, _ = self.run(self.load.open(cid))
        self.transports.append(transport)
        return session, ended

    def close(self) -> None:
        for t in self.transports:
            self.loop.call_soon_threadsafe(t.close)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture
def client(tls_stack: TLSStack) -> Iterator[Client]:
    c = Client(tls_stack.url, tls_stack.tls.ca_cert)
    try:
        yield c
    finally:
        c.close()


async def _echo_round_trip(session: Any, proc: str, value: int) -> Any:
    await session.register(lambda x: x, proc)
    return await session.call(proc, value)


async def _call(session: Any, proc: str, value: int) -> Any:
    return await session.call(proc, value)  # on the client's loop: autobahn is not thread-safe


async def _publish_round_trip(session: Any, topic: str) -> Any:
    got: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    await session.subscribe(lambda x: got.done() or got.set_result(x), topic)
    from autobahn.wamp.types import PublishOptions
    await session.publish(topic, "hello", options=PublishOptions(acknowledge=True,
                                                                  exclude_me=False))
    return await asyncio.wait_for(got, 10)


def test_a_wss_session_joins_through_the_tls_bind_and_round_trips(
        tls_stack: TLSStack, client: Client) -> None:
    assert tls_stack.served_serial() == tls_stack.file_serial()
    session, ended = client.join(0)
    assert session.is_attached()
    assert client.run(_echo_round_trip(session, "t.echo", 41)) == 41
    assert client.run(_publish_round_trip(session, "t.topic")) == "hello"
    assert not ended.done()
    # The client verifies: a CA that did not issue HAProxy's certificate is refused.
    other = local_tls.ensure(tls_stack.tls.site_pem.parent.with_name("other"), ["localhost"])
    stranger = Load(tls_stack.url, "realm1", 0.5, 10.0,
                    tls=tls_context(tls_stack.url, other.ca_cert))
    with pytest.raises(ssl.SSLCertVerificationError):
        client.run(stranger.open(1))


def test_rotation_keeps_open_sessions_and_a_bad_certificate_is_refused(
        tls_stack: TLSStack, client: Client) -> None:
    stack = tls_stack.stack
    session, ended = client.join(0)
    assert client.run(_echo_round_trip(session, "t.echo", 1)) == 1
    before = stack.master().status()
    first = tls_stack.served_serial()

    second = tls_stack.reissue("rotated.example")
    assert second != first
    wait_for(lambda: tls_stack.served_serial() == second, 15, "the new serial served")
    assert stack.log("agent").count("rotated certificate=") == 1, stack.log("agent")
    # The session opened before the rotation is still joined and still calls.
    assert not ended.done() and session.is_attached()
    assert client.run(_call(session, "t.echo", 2)) == 2
    # A new session verifies the new certificate through the same CA.
    fresh, _ = client.join(1)
    assert client.run(_echo_round_trip(fresh, "t.echo2", 3)) == 3
    after = stack.master().status()
    assert after.reloads == before.reloads
    assert after.workers == before.workers and after.master_pid == before.master_pid

    # Refused: a key that is not the certificate's, then an expired certificate; each is
    # one error in the agent's log, the second certificate stays served.
    site = tls_stack.tls.site_pem
    # (Another certificate: the served one with another key is the same certificate to
    # the agent, which compares certificates, and is left alone.)
    cert_part = make_pem("mismatched").split("-----BEGIN PRIVATE KEY-----")[0]
    other_key = make_pem("x").split("-----END CERTIFICATE-----\n")[1]
    expired = make_pem("expired", days=1, start=datetime.now(UTC) - timedelta(days=3))
    for bad, reason in ((cert_part + other_key, "inconsistencies between private key"),
                        (expired, "expired on")):
        n = tls_stack.refusals()
        tmp = site.with_name("site.pem.new")
        tmp.write_text(bad)
        tmp.replace(site)
        wait_for(lambda n=n: tls_stack.refusals() == n + 1, 15, f"the refusal ({reason})")
        line = [ln for ln in stack.log("agent").splitlines() if "not rotated" in ln][-1]
        assert reason in line and str(site) in line, line
        assert tls_stack.served_serial() == second
    assert tls_stack.refusals() == 2, "each refusal logged once"
    assert not ended.done() and client.run(_call(session, "t.echo", 4)) == 4
    final = stack.master().status()
    assert final.reloads == before.reloads and final.workers == before.workers
