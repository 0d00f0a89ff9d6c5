"""`lbsync up / scale / down` end to end: supervisord, HAProxy, Serf, Crossbar, sidecars.

One cluster serves the whole module (Crossbar nodes take seconds to start); each test
brings it to the nodes it needs itself (`nodes_up`: `lbsync up` the first time, else
`lbsync scale`), so it passes alone (`-k`) as in file order.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import requests
from cluster_rig import NEEDS_CLUSTER, lbsync, stop_cluster, wait
from loadgen import HttpLoad

from lbsync.cluster.local import Layout, Supervisor, leftovers
from lbsync.haproxy.runtime import RuntimeAPI
from lbsync.serf.agent_cmd import serf_agent_argv
from lbsync.serf.rpc import SerfRPC

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


UP_FLAGS = ("--proxies", "1", "--drain-timeout", f"{DRAIN:g}s", "--net", str(NET))


def nodes_up(layout: Layout, n: int) -> set[str]:
    """The precondition of a test: the cluster running with nodes node1..nodeN, all UP."""
    if Supervisor(layout).running():
        r = lbsync("scale", str(n), "--dir", str(layout.dir))
    else:
        r = lbsync("up", "--nodes", str(n), *UP_FLAGS, "--dir", str(layout.dir))
    assert r.returncode == 0, r.stdout + r.stderr
    nodes = {f"node{i}" for i in range(1, n + 1)}
    wait(lambda: up_servers(layout) == nodes, 60, f"{', '.join(sorted(nodes))} UP")
    return nodes


def runtime(layout: Layout) -> RuntimeAPI:
    return RuntimeAPI(f"{layout.lb_ip}:9999")  # the TCP socket users `nc` to


def up_servers(layout: Layout) -> set[str]:
    return {s.name for s in runtime(layout).servers_state("nodes") if s.up}


def node_of(response: requests.Response) -> str:
    return str(response.json()["node"])


def serf_alive(layout: Layout) -> set[str]:
    """The members the lb's Serf agent calls alive, asked with the cluster's token."""
    with SerfRPC(layout.lb_ip, 7373, layout.serf_auth_key(), timeout=2.0) as rpc:
        return {m.name for m in rpc.members() if str(m.status) == "alive"}


def serf_cli(layout: Layout, *args: str,
             token: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "SERF_RPC_AUTH"}
    if token is not None:
        env["SERF_RPC_AUTH"] = token
    return subprocess.run(["serf", *args, "-rpc-addr", f"{layout.lb_ip}:7373"],
                          capture_output=True, text=True, timeout=30, check=False, env=env)


@contextlib.contextmanager
def serf_agents() -> Iterator[list[subprocess.Popen[str]]]:
    """Serf agents a test starts by hand; all killed at the end, also on failure."""
    procs: list[subprocess.Popen[str]] = []
    try:
        yield procs
    finally:
        for p in procs:
            with contextlib.suppress(OSError):
                p.kill()
            p.wait(10)


def registry_names(layout: Layout) -> set[str]:
    return {p.stem for p in Path(layout.lb["registry"]).glob("*.json")}


def registry_alive(layout: Layout) -> set[str]:
    alive = set()
    for path in Path(layout.lb["registry"]).glob("*.json"):
        with contextlib.suppress(OSError, ValueError):
            if json.loads(path.read_text())["status"] == "alive":
                alive.add(path.stem)
    return alive


def kill_lb_serf(layout: Layout, forget: bool) -> None:
    """kill -9 the lb's Serf agent (FORGET: without its snapshot, as a fresh disk would
    start it) and wait until supervisord has started it again and it answers."""
    api = Supervisor(layout).rpc().supervisor
    pid = api.getProcessInfo("lb-serf")["pid"]
    if forget:  # unlinked first: the agent keeps appending to the file it has open
        Path(layout.lb["serf_snapshot"]).unlink()
    psutil.Process(pid).kill()
    wait(lambda: api.getProcessInfo("lb-serf")["pid"] not in (0, pid), 15,
         "supervisord restarts lb-serf")
    wait(lambda: serf_alive(layout) >= {"lb"}, 15, "the new lb-serf answers")


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
    r = lbsync("up", "--nodes", "2", *UP_FLAGS, "--dir", str(cluster.dir))
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


def test_the_gossip_is_keyed_and_an_agent_without_the_key_never_becomes_a_server(
        cluster: Layout) -> None:
    nodes_up(cluster, 2)
    for path in (cluster.serf_key, cluster.serf_token, cluster.serf_config):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    key, token = cluster.serf_key.read_text().strip(), cluster.serf_token.read_text().strip()
    pid = Supervisor(cluster).rpc().supervisor.getProcessInfo("lb-serf")["pid"]
    assert not {key, token} & set(psutil.Process(pid).cmdline())  # `ps` shows neither
    refused = serf_cli(cluster, "members")
    assert refused.returncode != 0 and "Authentication required" in refused.stderr + \
        refused.stdout, refused
    frontend = f"http://{cluster.lb_ip}:8080"
    intruder, friend = f"127.{NET}.0.99", f"127.{NET}.0.98"
    with serf_agents() as procs:
        # What the issue did by hand, but retrying the join all along.
        log = cluster.dir / "logs" / "test-intruder.log"
        with log.open("w") as sink:
            procs.append(subprocess.Popen(
                serf_agent_argv("intruder", f"{intruder}:7946", f"{intruder}:7373",
                                tags={"role": "edge", "port": "8080", "ready": "1"},
                                retry_join=f"{cluster.lb_ip}:7946", retry_interval="1s",
                                log_level=None),
                stdout=sink, stderr=subprocess.STDOUT, text=True))
        wait(lambda: "Remote state is encrypted and encryption is not configured"
             in log.read_text(), 15, "the intruder's join refused")
        # An agent with the key joins at once: the lb's gossip is live while it refuses.
        procs.append(subprocess.Popen(
            serf_agent_argv("friend", f"{friend}:7946", f"{friend}:7373",
                            tags={"role": "probe"}, encrypt=key, join=f"{cluster.lb_ip}:7946",
                            log_level=None),
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT))
        wait(lambda: "friend" in serf_alive(cluster), 15, "the keyed agent in the members")
        wait(lambda: "friend" in registry_names(cluster), 15, "the keyed agent registered")
        deadline = time.monotonic() + 4  # the intruder retries every second meanwhile
        while time.monotonic() < deadline:
            assert {s.name for s in runtime(cluster).servers_state("nodes")} == {
                "node1", "node2"}
            assert "intruder" not in registry_names(cluster)
            time.sleep(0.2)
        assert procs[0].poll() is None, "the intruder gave up early: the test proves less"
        listed = serf_cli(cluster, "members", token=token)
        assert listed.returncode == 0, listed
        names = {line.split()[0] for line in listed.stdout.splitlines() if line.strip()}
        assert names == {"lb", "node1", "node2", "friend"}
        assert {node_of(requests.get(f"{frontend}/mydata", timeout=5))
                for _ in range(12)} <= {"node1", "node2"}
        subprocess.run(["serf", "leave", "-rpc-addr", f"{friend}:7373"],
                       capture_output=True, timeout=30, check=False)


def test_status_works_with_no_flags(cluster: Layout) -> None:
    nodes_up(cluster, 2)
    # Only the cluster folder is named (a user's default one needs not even that).
    env = {k: v for k, v in os.environ.items() if not k.startswith("LBSYNC_")}
    env["LBSYNC_CLUSTER_DIR"] = str(cluster.dir)
    r = subprocess.run([sys.executable, "-m", "lbsync", "status", "--check"],
                       capture_output=True, text=True, timeout=60, check=False, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "node1" in r.stdout and "node2" in r.stdout


def test_wamp_probe_through_haproxy(cluster: Layout) -> None:
    nodes_up(cluster, 2)
    r = lbsync("probe", f"ws://{cluster.lb_ip}:8080/ws", "--realm", "realm1", timeout=60)
    assert r.returncode == 0, r.stderr
    assert "node node1" in r.stdout or "node node2" in r.stdout


def test_scale_up_then_down_under_load_loses_nothing(cluster: Layout) -> None:
    nodes_up(cluster, 2)
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
    nodes_up(cluster, 2)
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
    nodes_up(cluster, 2)
    assert serf_alive(cluster) >= {"node1", "node2"}
    kill_lb_serf(cluster, forget=False)
    wait(lambda: serf_alive(cluster) >= {"node1", "node2"}, 10,
         "node1 and node2 alive again for lb-serf")
    wait(lambda: lbsync("status", "--check", env={**os.environ, "LBSYNC_CLUSTER_DIR":
                                                  str(cluster.dir)}).returncode == 0,
         30, "status --check")


def test_a_lb_serf_agent_restarted_without_its_snapshot_is_whole_again_at_once(
        cluster: Layout) -> None:
    """Without a snapshot the new agent knows no member; lbsync joins the ones its registry
    knows alive, and neither the registry nor HAProxy ever loses them."""
    nodes = nodes_up(cluster, 2)
    wait(lambda: serf_alive(cluster) >= nodes and registry_alive(cluster) >= nodes
         and up_servers(cluster) == nodes, 30, "a settled cluster")
    seen: list[tuple[set[str], set[str]]] = []
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            with contextlib.suppress(Exception):  # a sample HAProxy did not answer
                seen.append((up_servers(cluster), registry_alive(cluster)))
            time.sleep(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    agent_log = cluster.dir / "logs" / "lb-agent.log"
    log_from = agent_log.stat().st_size
    watcher.start()
    try:
        started = time.monotonic()
        kill_lb_serf(cluster, forget=True)
        wait(lambda: serf_alive(cluster) >= nodes, 5, "the members back within 5 s")
        took = time.monotonic() - started
        time.sleep(1)
    finally:
        done.set()
        watcher.join(5)
    print(f"lb-serf killed without its snapshot: members alive again after {took:.2f} s")
    assert took < 5
    assert len(seen) >= 10  # HAProxy and the registry were watched all along
    assert all(up == nodes and alive >= nodes for up, alive in seen), [
        s for s in seen if s[0] != nodes or not s[1] >= nodes][:3]
    with agent_log.open() as f:
        f.seek(log_from)
        lines = [line for line in f if "did not know" in line]
    assert len(lines) == 1 and "node1, node2" in lines[0] and "joined 2 of 2" in lines[0], lines


def test_status_check_reports_drift_while_serf_does_not_know_served_servers(
        cluster: Layout) -> None:
    """With lbsync's agent stopped nothing rejoins the members: HAProxy keeps serving
    them, and `status --check` must not call that fine. Started again, the agent rejoins
    them from its registry."""
    nodes = nodes_up(cluster, 2)
    env = {**os.environ, "LBSYNC_CLUSTER_DIR": str(cluster.dir)}
    api = Supervisor(cluster).rpc().supervisor
    api.stopProcess("lb-agent", True)
    try:
        for _attempt in range(3):
            kill_lb_serf(cluster, forget=True)
            r = lbsync("status", "--check", env=env)
            # A member retries a failed one every ~30 s: if one came back by itself in
            # this window, Serf knows it again and there is no drift to see; again.
            if serf_alive(cluster) == {"lb"}:
                break
        else:
            pytest.skip("the members rejoined by themselves three times in a row")
        assert r.returncode == 1, r.stdout + r.stderr
        assert "drift on 2 member(s): node1, node2" in r.stderr, r.stderr
        assert r.stdout.count("Serf does not know it") == 2, r.stdout
        assert up_servers(cluster) == nodes  # HAProxy never emptied the backend
    finally:
        api.startProcess("lb-agent", True)
    wait(lambda: serf_alive(cluster) >= nodes, 10, "the started agent rejoins the members")
    wait(lambda: lbsync("status", "--check", env=env).returncode == 0, 30, "status --check")


def test_down_leaves_no_process(cluster: Layout) -> None:
    nodes_up(cluster, 2)
    r = lbsync("down", "--dir", str(cluster.dir))
    assert r.returncode == 0, r.stdout + r.stderr
    assert leftovers(cluster) == []
    ours = [p for p in psutil.process_iter(["cmdline"])
            if any(f"127.{NET}.0." in a or str(cluster.dir) in a
                   for a in (p.info["cmdline"] or []))]
    assert ours == []
