"""One WAMP realm across the fleet: the edge nodes' router links, on the real local cluster.

`lbsync up --nodes 2` on 127.156.0.x serves the whole module; the tests run in file order,
each leaving the cluster as the next one expects (2 nodes, every link up). The clients are
real autobahn asyncio sessions, pinned to a node by HAProxy's sticky cookie; the node that
holds a session is the WELCOME's `x_cb_node`.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import psutil
import pytest
import requests
from cluster_rig import NEEDS_CLUSTER, lbsync, stop_cluster, wait

from lbsync.cluster.local import Layout
from lbsync.edge import links as L
from lbsync.haproxy.master import MasterCLI
from lbsync.haproxy.runtime import RuntimeAPI
from tests.rig.procs import StackError

NET = 156  # nobody else uses 127.156.0.x
COOKIE = "SERVERID"  # Settings.cookie_name, the cookie HAProxy inserts
REALM = "realm1"
EVENTS = 5  # numbered events each publisher sends once the links carry its warm-ups

pytestmark = NEEDS_CLUSTER


# --- the cluster -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory,
            request: pytest.FixtureRequest) -> Iterator[Layout]:
    layout = Layout(tmp_path_factory.mktemp("links") / "c", NET)
    failed_before = request.session.testsfailed
    try:
        r = lbsync("up", "--nodes", "2", "--proxies", "1", "--drain-timeout", "3s",
                   "--dir", str(layout.dir), "--net", str(NET))
        assert r.returncode == 0, r.stdout + r.stderr
        yield layout
    finally:
        stop_cluster(layout)
        if request.session.testsfailed == failed_before:  # keep the logs of a failure
            shutil.rmtree(layout.dir.parent, ignore_errors=True)


def links_check(layout: Layout) -> subprocess.CompletedProcess[str]:
    return lbsync("links", "--dir", str(layout.dir), "--check", timeout=30)


def wait_links_up(layout: Layout, timeout: float = 60) -> str:
    """Poll `lbsync links --check` until every wanted link is up; its output."""
    out: list[str] = []

    def ok() -> bool:
        r = links_check(layout)
        out[:] = [r.stdout + r.stderr]
        return r.returncode == 0

    try:
        wait(ok, timeout, "lbsync links --check to exit 0")
    except StackError as e:
        raise AssertionError(f"{e}; last output:\n{''.join(out)}") from None
    return out[0]


def sidecar_log(layout: Layout, node: str) -> list[str]:
    return (layout.dir / "logs" / f"{node}-sidecar.log").read_text().splitlines()


def first(lines: list[str], text: str, start: int = 0) -> int:
    """Index of the first line from `start` on that holds `text`; -1 when none does."""
    return next((i for i in range(start, len(lines)) if text in lines[i]), -1)


def up_servers(layout: Layout) -> set[str]:
    api = RuntimeAPI(f"{layout.lb_ip}:9999")
    return {s.name for s in api.servers_state("nodes") if s.up}


def cookie_for(layout: Layout, node: str) -> str:
    """A `Cookie` header value that pins a client to `node` through HAProxy."""
    for _ in range(100):
        r = requests.get(f"http://{layout.lb_ip}:8080/mydata", timeout=5)
        if r.json()["node"] == node and COOKIE in r.cookies:
            return f"{COOKIE}={r.cookies[COOKIE]}"
    raise AssertionError(f"HAProxy never sent a fresh client to {node}")


def frontend(layout: Layout) -> str:
    return f"ws://{layout.lb_ip}:8080/ws"


# --- WAMP clients ----------------------------------------------------------------------------


class Refused(Exception):
    """The session ended before it joined; args[0] is the reason (a WAMP error URI)."""


def new_session(realm: str, key: Any = None,
                pubkey: str | None = None) -> tuple[Any, asyncio.Future[Any]]:
    """(an autobahn asyncio ApplicationSession, a future of its WELCOME details). It joins
    anonymously, or with cryptosign when `key` (a CryptosignKey) is given: `key` signs the
    challenge, `pubkey` is the public key claimed (default: the key's own)."""
    from autobahn.asyncio.wamp import ApplicationSession  # the edge extra
    from autobahn.wamp.types import ComponentConfig

    joined: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

    class Session(ApplicationSession):
        def onConnect(self) -> None:  # noqa: N802 (autobahn's names)
            if key is None:
                self.join(realm)
            else:
                self.join(realm, authmethods=["cryptosign"],
                          authextra={"pubkey": pubkey or key.public_key()})

        def onChallenge(self, challenge: Any) -> Any:  # noqa: N802
            return key.sign_challenge(challenge)

        def onJoin(self, details: Any) -> None:  # noqa: N802
            if not joined.done():
                joined.set_result(details)

        def onLeave(self, details: Any) -> None:  # noqa: N802
            if not joined.done():
                joined.set_exception(Refused(details.reason, details.message))
            super().onLeave(details)

        def onDisconnect(self) -> None:  # noqa: N802
            if not joined.done():
                joined.set_exception(Refused("connection closed"))

    return Session(ComponentConfig(realm=realm)), joined


@dataclass
class Client:
    session: Any
    transport: Any
    details: Any

    @property
    def node(self) -> str:
        return str((self.details.authextra or {}).get("x_cb_node"))

    async def close(self) -> None:
        if self.session.is_attached():
            self.session.leave()
            await asyncio.sleep(0.05)  # let GOODBYE out before the socket closes
        self.transport.close()


async def connect(url: str, cookie: str | None = None, key: Any = None,
                  pubkey: str | None = None, realm: str = REALM) -> Client:
    """A joined session at URL; Refused when the router does not let it in."""
    from autobahn.asyncio.websocket import WampWebSocketClientFactory
    from autobahn.websocket.util import parse_url

    session, joined = new_session(realm, key, pubkey)
    _, host, port = parse_url(url)[:3]
    factory = WampWebSocketClientFactory(session, url=url,
                                         headers={"Cookie": cookie} if cookie else None)
    transport, _ = await asyncio.wait_for(
        asyncio.get_running_loop().create_connection(factory, host, port), 10)
    try:
        details = await asyncio.wait_for(joined, 10)
    except BaseException:
        transport.close()
        raise
    return Client(session, transport, details)


async def pinned(layout: Layout, cookies: dict[str, str], node: str) -> Client:
    """A session through HAProxy on `node`, by its sticky cookie."""
    client = await connect(frontend(layout), cookie=cookies[node])
    if client.node != node:
        await client.close()
        raise AssertionError(f"the {COOKIE} cookie of {node} led to {client.node}")
    return client


@dataclass
class Heard:
    """What one subscriber received: (publisher, number) of the counted events, and the
    publishers of the warm-ups."""

    counted: list[tuple[int, int]] = field(default_factory=list)
    warm: set[int] = field(default_factory=set)


async def call_across(caller: Client, procedure: str, arg: str, within: float = 5.0) -> Any:
    """Call; a registration reaches the other nodes once their links mirror it."""
    from autobahn.wamp.exception import ApplicationError

    deadline = time.monotonic() + within
    while True:
        try:
            return await asyncio.wait_for(caller.session.call(procedure, arg), 10)
        except ApplicationError as e:
            if e.error != "wamp.error.no_such_procedure" or time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)


async def assert_one_realm(clients: list[Client]) -> None:
    """Every client calls a procedure every other one registered (and gets that one's
    answer), and receives every other one's numbered events exactly once, in order; no
    publisher hears itself (exclude_me is the default)."""
    from autobahn.wamp.types import PublishOptions

    token = uuid.uuid4().hex
    topic = f"test.links.{token}.event"
    heard = [Heard() for _ in clients]

    def on_event(receiver: int) -> Callable[[int, int | None], None]:
        def handler(publisher: int, number: int | None) -> None:
            if number is None:
                heard[receiver].warm.add(publisher)
            else:
                heard[receiver].counted.append((publisher, number))
        return handler

    for i, c in enumerate(clients):
        await c.session.register(lambda arg, node=c.node: [node, arg], f"test.links.{token}.p{i}")
        await c.session.subscribe(on_event(i), topic)
    for i, caller in enumerate(clients):
        for j, callee in enumerate(clients):
            if i != j:
                got = await call_across(caller, f"test.links.{token}.p{j}", f"from {i}")
                assert got == [callee.node, f"from {i}"], (
                    f"{caller.node} called {callee.node}'s procedure, got {got!r}")
    others = [{j for j in range(len(clients)) if j != i} for i in range(len(clients))]
    ack = PublishOptions(acknowledge=True)
    deadline = time.monotonic() + 10
    while any(heard[i].warm < others[i] for i in range(len(clients))):
        assert time.monotonic() < deadline, (
            "warm-up events did not cross: "
            f"{[(c.node, sorted(h.warm)) for c, h in zip(clients, heard, strict=True)]}")
        for i, c in enumerate(clients):
            await c.session.publish(topic, i, None, options=ack)
        await asyncio.sleep(0.05)
    for i, c in enumerate(clients):
        for n in range(EVENTS):
            await c.session.publish(topic, i, n, options=ack)
    await asyncio.sleep(0.5)  # a duplicate would arrive meanwhile
    for j, c in enumerate(clients):
        assert j not in heard[j].warm, f"the publisher on {c.node} heard its own warm-up"
        for i, p in enumerate(clients):
            got = [n for who, n in heard[j].counted if who == i]
            want = [] if i == j else list(range(EVENTS))
            assert got == want, (
                f"{c.node} received {got} of {p.node}'s events {list(range(EVENTS))}"
                + (" (its own: exclude_me)" if i == j else ""))


def realm_across(layout: Layout, nodes: list[str]) -> None:
    """Open one session per node (pinned by cookie) and assert_one_realm across them."""
    cookies = {n: cookie_for(layout, n) for n in nodes}

    async def run() -> None:
        clients: list[Client] = []
        try:
            for n in nodes:
                clients.append(await pinned(layout, cookies, n))
            await assert_one_realm(clients)
        finally:
            for c in clients:
                await c.close()

    asyncio.run(run())


# --- the tests -------------------------------------------------------------------------------


def test_clients_on_two_nodes_are_one_realm(cluster: Layout) -> None:
    # Both nodes started together: neither waited for the other's link (none served yet).
    out = wait_links_up(cluster)
    assert out.count("1/1 links up") == 2, out
    cookies = {n: cookie_for(cluster, n) for n in ("node1", "node2")}
    assert cookies["node1"] != cookies["node2"]

    async def run() -> None:
        from autobahn.wamp.types import PublishOptions

        a = await pinned(cluster, cookies, "node1")
        b = await pinned(cluster, cookies, "node2")
        try:
            # A subscribes and registers; B publishes and calls; then the other way round.
            for sub, pub in ((a, b), (b, a)):
                token = uuid.uuid4().hex
                got: list[int] = []
                own: list[int] = []
                await sub.session.register(lambda x: x * 10 + 1, f"test.links.{token}.f")
                await sub.session.subscribe(got.append, f"test.links.{token}.t")
                await pub.session.subscribe(own.append, f"test.links.{token}.t")
                assert await call_across(pub, f"test.links.{token}.f", 4) == 41
                ack = PublishOptions(acknowledge=True)
                for _ in range(200):  # warm-ups (-1) until the subscription is mirrored
                    await pub.session.publish(f"test.links.{token}.t", -1, options=ack)
                    await asyncio.sleep(0.05)
                    if got:
                        break
                assert got, f"no warm-up event crossed from {pub.node} to {sub.node}"
                sent = list(range(10))
                for n in sent:
                    await pub.session.publish(f"test.links.{token}.t", n, options=ack)
                await asyncio.sleep(0.5)  # a duplicate would arrive meanwhile
                counted = [n for n in got if n != -1]  # a late warm-up may still arrive
                assert counted == sent, f"{sub.node} received {counted} of {pub.node}'s {sent}"
                assert own == [], f"{pub.node}'s publisher received its own events: {own}"
                for n in (0, 7, -3):
                    assert await pub.session.call(f"test.links.{token}.f", n) == n * 10 + 1
            await assert_one_realm([a, b])
        finally:
            await a.close()
            await b.close()

    asyncio.run(run())


def test_a_joining_node_takes_clients_only_once_linked(cluster: Layout) -> None:
    r = lbsync("scale", "3", "--dir", str(cluster.dir))
    assert r.returncode == 0, r.stdout + r.stderr
    assert up_servers(cluster) == {"node1", "node2", "node3"}
    lines = sidecar_log(cluster, "node3")
    gate = first(lines, "ready=1 waits for the router links to ")
    ups = [first(lines, f"router link to {n} up") for n in ("node1", "node2")]
    ready = next((i for i, line in enumerate(lines)
                  if "tags set:" in line and " ready=1" in line), -1)
    log = "\n".join(lines)
    assert gate >= 0 and min(ups) >= 0 and ready >= 0, log
    assert gate < min(ups) and max(ups) < ready, log
    # The old nodes link to node3 once their sidecars see it in Serf.
    out = wait_links_up(cluster)
    assert out.count("2/2 links up") == 3, out
    cookies = {n: cookie_for(cluster, n) for n in ("node1", "node2", "node3")}

    async def run() -> None:
        a = await pinned(cluster, cookies, "node1")
        b = await pinned(cluster, cookies, "node2")
        c = await pinned(cluster, cookies, "node3")
        try:
            # node3 calls node1's procedure and hears node2's events; node1 hears node3's.
            await assert_one_realm([a, b, c])
        finally:
            for x in (a, b, c):
                await x.close()

    asyncio.run(run())


def test_a_leaving_node_is_unlinked(cluster: Layout) -> None:
    r = lbsync("scale", "2", "--dir", str(cluster.dir))
    assert r.returncode == 0, r.stdout + r.stderr
    for node in ("node1", "node2"):
        wait(lambda node=node: first(sidecar_log(cluster, node),
                                     "router link to node3 removed") >= 0,
             60, f"{node}'s sidecar to log the removal of its link to node3")
    out = wait_links_up(cluster)
    assert out.count("1/1 links up") == 2 and "node3" not in out, out
    for node in ("node1", "node2"):
        report = L.read_state(cluster.node(int(node[-1])).cbdir)
        assert report is not None and set(report.links) == {"node1", "node2"} - {node}
    realm_across(cluster, ["node1", "node2"])


def test_a_restarted_router_is_linked_again(cluster: Layout) -> None:
    node2 = cluster.node(2)
    before = L.read_state(node2.cbdir)
    assert before is not None and before.up == {"node1"}
    worker = psutil.Process(before.pid)
    assert "crossbar" in " ".join(worker.cmdline()), worker.cmdline()
    skip = len(sidecar_log(cluster, "node1"))
    os.kill(before.pid, signal.SIGKILL)

    def relinked() -> bool:
        now = L.read_state(node2.cbdir)
        return (now is not None and now.pid != before.pid and psutil.pid_exists(now.pid)
                and links_check(cluster).returncode == 0)

    wait(relinked, 60, "node2's new router to be linked both ways")
    after = L.read_state(node2.cbdir)
    assert after is not None and after.pid != before.pid and after.up == {"node1"}
    out = wait_links_up(cluster, 5)
    assert f"router pid {after.pid}" in out, out

    def down_then_up() -> bool:  # the sidecar looks at the links twice a second
        lines = sidecar_log(cluster, "node1")
        down = first(lines, "router link to node2 down", skip)
        return 0 <= down < first(lines, "router link to node2 up", down)

    try:
        wait(down_then_up, 10, "node1's sidecar to log its link to node2 down, then up")
    except StackError as e:
        raise AssertionError(f"{e}:\n" + "\n".join(sidecar_log(cluster, "node1")[skip:])) from None
    wait(lambda: up_servers(cluster) == {"node1", "node2"}, 60, "node2 UP in HAProxy")
    realm_across(cluster, ["node1", "node2"])


def test_probe_status_and_no_reload(cluster: Layout) -> None:
    url = frontend(cluster)
    r = lbsync("probe", url, url, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "ok: 2 sessions on 2 node(s) are one realm" in r.stdout, r.stdout
    assert "node node1" in r.stdout and "node node2" in r.stdout, r.stdout

    env = {k: v for k, v in os.environ.items() if not k.startswith("LBSYNC_")}
    env["LBSYNC_CLUSTER_DIR"] = str(cluster.dir)
    table: list[str] = []

    def links_column() -> dict[str, str]:
        r = lbsync("status", env=env, timeout=60)
        table[:] = [r.stdout + r.stderr]
        lines = r.stdout.splitlines()
        if not lines:
            return {}  # no table yet (an agent still starting): not yet
        column = lines[0].split().index("LINKS")
        return {row.split()[0]: row.split()[column] for row in lines[1:]}

    try:
        wait(lambda: {n: v for n, v in links_column().items() if n in ("node1", "node2")}
             == {"node1": "1/1", "node2": "1/1"}, 30, "LINKS 1/1 on node1 and node2")
    except StackError as e:
        raise AssertionError(f"{e}:\n{table[0]}") from None
    r = lbsync("status", "--check", env=env, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    # Joins, leaves, a crashed router: membership changes only, never a reload.
    assert MasterCLI(cluster.lb["master_socket"]).status().reloads == 0


def test_only_the_fleet_key_can_link(cluster: Layout) -> None:
    from autobahn.wamp.cryptosign import CryptosignKey

    url = f"ws://{cluster.node(1).ip}:{L.DEFAULT_LINK_PORT}/{L.LINK_PATH}"
    secret = L.read_secret(cluster.fleet_secret.read_text(), str(cluster.fleet_secret))
    fleet = CryptosignKey.from_bytes(L.fleet_seed(secret))
    assert fleet.public_key() == L.fleet_public_key(secret)
    stranger = CryptosignKey.from_bytes(os.urandom(32))

    async def refusal(key: Any = None, pubkey: str | None = None) -> str:
        try:
            client = await connect(url, key=key, pubkey=pubkey)
        except Refused as e:
            return str(e.args[0])
        await client.close()
        raise AssertionError(f"joined {url} as {client.details.authrole!r}")

    async def run() -> None:
        # The positive control: the same client with the fleet key is a link.
        member = await connect(url, key=fleet)
        try:
            assert member.details.authrole == L.LINK_ROLE
            assert member.details.authmethod == "cryptosign"
        finally:
            await member.close()
        assert await refusal(key=stranger) == "wamp.error.not_authorized"
        # The fleet's public key claimed, the challenge signed with another key.
        assert await refusal(key=stranger, pubkey=fleet.public_key()) == (
            "wamp.error.not_authorized")
        assert await refusal() in ("wamp.error.no_auth_method",  # anonymous
                                   "wamp.error.not_authorized")

    asyncio.run(run())
