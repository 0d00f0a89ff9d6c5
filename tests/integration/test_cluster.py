"""`lbsync up / scale / down` end to end: supervisord, HAProxy, Serf, Crossbar, sidecars.

One cluster serves the whole module (Crossbar nodes take seconds to start); the tests
run in file order, each leaving the cluster as the next one expects.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import psutil
import pytest
import requests
from cluster_rig import NEEDS_CLUSTER, lbsync, stop_cluster, wait
from loadgen import HttpLoad

from lbsync.cluster.local import Layout, Supervisor, leftovers
from lbsync.haproxy.runtime import RuntimeAPI

NET = 150
DRAIN = 6.0

pytestmark = NEEDS_CLUSTER


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Layout]:
    layout = Layout(tmp_path_factory.mktemp("cluster") / "c", NET)
    try:
        yield layout
    finally:
        stop_cluster(layout)


def runtime(layout: Layout) -> RuntimeAPI:
    return RuntimeAPI(f"{layout.lb_ip}:9999")  # the TCP socket users `nc` to


def up_servers(layout: Layout) -> set[str]:
    return {s.name for s in runtime(layout).servers_state("nodes") if s.up}


def node_of(response: requests.Response) -> str:
    return str(response.json()["node"])


class WampSessions:
    """Long-lived WAMP sessions through HAProxy, on an event loop in a thread."""

    def __init__(self, url: str, count: int) -> None:
        self.url, self.count = url, count
        self.nodes: list[str] = []
        self.closed_at: dict[int, float] = {}
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def open(self, timeout: float = 30) -> None:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._open(), self.loop).result(timeout)

    async def _open(self) -> None:
        from autobahn.asyncio.wamp import ApplicationSession
        from autobahn.asyncio.websocket import WampWebSocketClientFactory
        from autobahn.wamp.types import ComponentConfig
        from autobahn.websocket.util import parse_url

        class Held(ApplicationSession):
            def onJoin(self, details):  # type: ignore[no-untyped-def]  # noqa: N802
                self.config.extra["joined"].set_result(details.authextra["x_cb_node"])

            def onDisconnect(self) -> None:  # noqa: N802
                extra = self.config.extra
                extra["closed_at"][extra["index"]] = time.monotonic()

        _, host, port = parse_url(self.url)[:3]
        for i in range(self.count):
            joined: asyncio.Future[str] = self.loop.create_future()
            extra = {"joined": joined, "index": i, "closed_at": self.closed_at}
            factory = WampWebSocketClientFactory(Held(ComponentConfig("realm1", extra)),
                                                 url=self.url)
            await self.loop.create_connection(factory, host, port)
            self.nodes.append(await asyncio.wait_for(joined, 10))

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


def test_up_two_nodes_serves_from_both_with_sticky_cookies(cluster: Layout) -> None:
    r = lbsync("up", "--nodes", "2", "--proxies", "1", "--drain-timeout", f"{DRAIN:g}s",
               "--dir", str(cluster.dir), "--net", str(NET))
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"echo \"show servers state\" | nc {cluster.lb_ip} 9999" in r.stdout
    assert up_servers(cluster) == {"node1", "node2"}
    frontend = f"http://{cluster.lb_ip}:8080"
    assert {node_of(requests.get(f"{frontend}/mydata", timeout=5)) for _ in range(20)} == {
        "node1", "node2"}
    client = requests.Session()
    first = node_of(client.get(f"{frontend}/mydata", timeout=5))
    assert {node_of(client.get(f"{frontend}/mydata", timeout=5)) for _ in range(20)} == {first}
    info = requests.get(f"{frontend}/info", timeout=5)
    assert info.status_code == 200 and "text/html" in info.headers["Content-Type"]
    # Both Prometheus endpoints the README names for the local cluster.
    assert f"http://{cluster.lb_ip}:9180/metrics (lbsync)" in r.stdout
    agent = requests.get(f"http://{cluster.lb_ip}:9180/metrics", timeout=5).text
    assert 'lbsync_servers{state="UP"} 2.0' in agent
    haproxy = requests.get(f"http://{cluster.lb_ip}:1936/metrics", timeout=5).text
    assert 'haproxy_backend_active_servers{proxy="nodes"} 2' in haproxy


def test_status_works_with_no_flags(cluster: Layout) -> None:
    # Only the cluster folder is named (a user's default one needs not even that).
    env = {k: v for k, v in os.environ.items() if not k.startswith("LBSYNC_")}
    env["LBSYNC_CLUSTER_DIR"] = str(cluster.dir)
    r = subprocess.run([sys.executable, "-m", "lbsync", "status", "--check"],
                       capture_output=True, text=True, timeout=60, check=False, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "node1" in r.stdout and "node2" in r.stdout


def test_wamp_probe_through_haproxy(cluster: Layout) -> None:
    r = lbsync("probe", f"ws://{cluster.lb_ip}:8080/ws", "--realm", "realm1", timeout=60)
    assert r.returncode == 0, r.stderr
    assert "node node1" in r.stdout or "node node2" in r.stdout


def test_scale_up_then_down_under_load_loses_nothing(cluster: Layout) -> None:
    r = lbsync("scale", "4", "--dir", str(cluster.dir))
    assert r.returncode == 0, r.stdout + r.stderr
    assert up_servers(cluster) == {"node1", "node2", "node3", "node4"}

    frontend = f"http://{cluster.lb_ip}:8080"
    # Clients pinned by cookie to the nodes about to go: they must be moved, not failed.
    pinned = []
    for target in ("node3", "node4"):
        for _ in range(50):
            s = requests.Session()
            if node_of(s.get(f"{frontend}/mydata", timeout=5)) == target:
                pinned.append(s)
                break
    assert len(pinned) == 2
    wamp = WampSessions(f"ws://{cluster.lb_ip}:8080/ws", 8)
    wamp.open()
    try:
        assert set(wamp.nodes) - {"node1"}, "no WAMP session landed on a node to remove"
        with HttpLoad(f"{frontend}/mydata", sticky_to=pinned) as load:
            started = time.monotonic()
            r = lbsync("scale", "1", "--dir", str(cluster.dir))
            time.sleep(1)
        assert r.returncode == 0, r.stdout + r.stderr
        assert load.failures == [], f"{len(load.failures)} failed: {load.failures[:5]}"
        assert load.ok > 100
        assert up_servers(cluster) == {"node1"}
        for i, node in enumerate(wamp.nodes):
            if node == "node1":
                assert i not in wamp.closed_at, "a session on the kept node was cut"
            else:
                # Open sessions hold the node's drain until its deadline, no earlier.
                assert i in wamp.closed_at, f"session {i} on {node} outlived its node"
                assert wamp.closed_at[i] - started >= DRAIN * 0.9
    finally:
        wamp.close()


def test_crossbar_crash_is_marked_down_and_clients_keep_being_served(cluster: Layout) -> None:
    r = lbsync("scale", "2", "--dir", str(cluster.dir))
    assert r.returncode == 0, r.stdout + r.stderr
    victim = "node2"
    info = Supervisor(cluster).rpc().supervisor.getProcessInfo(f"{victim}:{victim}-crossbar")
    frontend = f"http://{cluster.lb_ip}:8080"
    with HttpLoad(f"{frontend}/mydata") as load:
        controller = psutil.Process(info["pid"])
        tree = [controller, *controller.children(recursive=True)]
        for p in tree:
            p.kill()
        wait(lambda: {s.name: s.state_word for s in runtime(cluster).servers_state("nodes")}[
            victim] == "DOWN", 15, f"{victim} DOWN")
        time.sleep(2)
    assert load.failures == [], f"{len(load.failures)} failed: {load.failures[:5]}"
    assert load.ok > 50
    # supervisord restarts Crossbar; the node comes back on its own.
    wait(lambda: up_servers(cluster) == {"node1", "node2"}, 60, f"{victim} back UP")


def test_a_killed_lb_serf_agent_knows_the_members_again_at_once(cluster: Layout) -> None:
    """The lb's Serf agent restarts from its snapshot and rejoins the members it knew,
    instead of waiting for their reconnects (about 35 s without it)."""
    from lbsync.serf.rpc import SerfRPC

    def alive() -> set[str]:
        with SerfRPC(cluster.lb_ip, 7373, timeout=2.0) as rpc:
            return {m.name for m in rpc.members() if str(m.status) == "alive"}

    assert alive() >= {"node1", "node2"}
    pid = Supervisor(cluster).rpc().supervisor.getProcessInfo("lb-serf")["pid"]
    psutil.Process(pid).kill()
    wait(lambda: Supervisor(cluster).rpc().supervisor.getProcessInfo("lb-serf")["pid"] != pid,
         15, "supervisord restarts lb-serf")
    wait(lambda: alive() >= {"node1", "node2"}, 10, "node1 and node2 alive again for lb-serf")
    wait(lambda: lbsync("status", "--check", env={**os.environ, "LBSYNC_CLUSTER_DIR":
                                                  str(cluster.dir)}).returncode == 0,
         30, "status --check")


def test_down_leaves_no_process(cluster: Layout) -> None:
    r = lbsync("down", "--dir", str(cluster.dir))
    assert r.returncode == 0, r.stdout + r.stderr
    assert leftovers(cluster) == []
    ours = [p for p in psutil.process_iter(["cmdline"])
            if any(f"127.{NET}.0." in a or str(cluster.dir) in a
                   for a in (p.info["cmdline"] or []))]
    assert ours == []
