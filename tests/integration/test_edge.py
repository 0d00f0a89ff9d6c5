"""The edge node for real: a Crossbar.io node from `lbsync crossbar-config`, the probe,
and `lbsync node` beside a real Serf agent.

Every Crossbar node runs in its own process group (controller + workers) and is stopped
at teardown: SIGTERM to the group, then SIGKILL.
"""

from __future__ import annotations

import contextlib
import http.client
import itertools
import json
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest
from cluster_rig import CROSSBAR, why_no_crossbar
from serf_fixtures import SerfAgent, StartAgent

from lbsync.edge.crossbar import ROUTER_SOCKET
from lbsync.edge.probe import probe
from lbsync.model import Member, MemberStatus
from lbsync.settings import flags
from tests.rig.procs import free_port, reap, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module", autouse=True)
def _crossbar_runs() -> None:
    """Skip the module, with the reason, where Crossbar cannot run (checked once, lazily:
    `crossbar version` takes seconds, and collection should not pay for it)."""
    if (reason := why_no_crossbar()) is not None:
        pytest.skip(reason)

# 127.77.X.Y: X from the pid keeps concurrent runs apart, Y counts nodes.
_IPS = (f"127.77.{1 + os.getpid() % 250}.{y}" for y in itertools.cycle(range(1, 255)))


def lbsync(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "lbsync", *args], capture_output=True,
                          text=True, timeout=120, check=False)


def http_get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status, r.read().decode()
    except OSError:
        return 0, ""


@dataclass
class CrossbarNode:
    name: str
    ip: str
    cbdir: Path
    proxies: int
    port: int = 0
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    started_at: float = 0.0

    def __post_init__(self) -> None:
        self.port = self.port or free_port(self.ip)

    @property
    def base(self) -> str:
        return f"http://{self.ip}:{self.port}"

    @property
    def ws(self) -> str:
        return f"ws://{self.ip}:{self.port}/ws"

    def configure(self) -> None:
        r = lbsync("crossbar-config", *flags(
            "crossbar-config", cbdir=self.cbdir, node_name=self.name,
            listen=f"{self.ip}:{self.port}", proxies=self.proxies))
        assert r.returncode == 0, r.stderr

    def start(self) -> None:
        if not (self.cbdir / "config.json").exists():
            self.configure()
        with (self.cbdir / "crossbar.log").open("ab") as log:
            self.started_at = time.monotonic()
            self.proc = subprocess.Popen(
                [str(CROSSBAR), "start", "--cbdir", str(self.cbdir), "--loglevel", "warn"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True)

    def info_ok(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            pytest.fail(f"crossbar exited {self.proc.returncode}:\n{self.log_tail()}")
        return http_get(self.base + "/info")[0] == 200

    def wait_info(self, timeout: float = 60.0) -> float:
        """Seconds from `crossbar start` to the first 200 on /info."""
        wait_for(self.info_ok, timeout, f"crossbar {self.name} /info")
        return time.monotonic() - self.started_at

    def listeners(self) -> int:
        """Processes listening on the shared port (one per running proxy worker)."""
        return len({c.pid for c in psutil.net_connections(kind="tcp")
                    if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == self.port
                    and c.laddr.ip == self.ip})

    def processes(self) -> list[psutil.Process]:
        """The controller and all its workers."""
        assert self.proc is not None
        root = psutil.Process(self.proc.pid)
        return [root, *root.children(recursive=True)]

    def stop(self) -> None:
        if self.proc is not None:
            reap(self.proc, 10)

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = (self.cbdir / "crossbar.log").read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])


StartNode = Callable[..., CrossbarNode]


@contextlib.contextmanager
def _nodes(base: Path) -> Iterator[StartNode]:
    nodes: list[CrossbarNode] = []

    def make(name: str, proxies: int = 2, start: bool = True) -> CrossbarNode:
        node = CrossbarNode(name, next(_IPS), base / name, proxies)
        nodes.append(node)
        node.configure()
        if start:
            node.start()
        return node

    try:
        yield make
    finally:
        for node in nodes:
            node.stop()


@pytest.fixture
def crossbar_nodes(tmp_path: Path) -> Iterator[StartNode]:
    """Factory: `make(name, proxies=2, start=True) -> CrossbarNode` (configured)."""
    with _nodes(tmp_path) as make:
        yield make


@pytest.fixture(scope="module")
def shared_node() -> Iterator[CrossbarNode]:
    """One running node (2 proxy workers) for the tests that do not restart it.

    Its folder is under /tmp and open to all (not in pytest's private tmp folder), so that
    only the node's own CBDIR/run stands between another user and the router socket.
    """
    base = Path(tempfile.mkdtemp(prefix="lbsync-edge-"))
    base.chmod(0o755)
    try:
        with _nodes(base) as make:
            node = make("edge1", proxies=2)
            node.wait_info()
            wait_for(lambda: node.listeners() == 2, 30, "both proxy workers listening")
            yield node
    finally:
        shutil.rmtree(base, ignore_errors=True)


# --- the node itself ----------------------------------------------------------------------


def http_request(method: str, url: str) -> tuple[int, dict[str, str], bytes]:
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=5)
    try:
        conn.request(method, parts.path)
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


def test_info_is_an_html_page_naming_the_node(shared_node: CrossbarNode) -> None:
    # http.client follows no redirect: a 3xx would show here.
    status, headers, body = http_request("GET", shared_node.base + "/info")
    assert status == 200
    assert headers["content-type"] == "text/html; charset=utf-8"
    assert headers["x-node"] == "edge1"
    text = body.decode()
    assert "<h1>node edge1</h1>" in text
    assert re.search(r"<dt>worker</dt><dd>proxy[12]</dd>", text)
    assert "<dt>realm</dt><dd>realm1</dd>" in text


def test_info_answers_head_without_a_body(shared_node: CrossbarNode) -> None:
    status, headers, body = http_request("HEAD", shared_node.base + "/info")
    assert (status, body) == (200, b"")
    assert headers["content-type"] == "text/html; charset=utf-8"
    assert int(headers["content-length"]) > 0


def test_workers_start_without_a_traceback(shared_node: CrossbarNode) -> None:
    # A bjdata built against NumPy 1.x printed one per worker (scripts/setup.sh fixes it).
    log = (shared_node.cbdir / "crossbar.log").read_text(errors="replace")
    assert "Traceback" not in log and "NumPy" not in log, shared_node.log_tail()


def test_mydata_names_the_node(shared_node: CrossbarNode) -> None:
    status, body = http_get(shared_node.base + "/mydata")
    assert status == 200
    data = json.loads(body)
    assert data["node"] == "edge1" and data["realm"] == "realm1"


def test_probe_command_reports_the_node(shared_node: CrossbarNode) -> None:
    r = lbsync("probe", shared_node.ws, "--realm", "realm1", "--timeout", "10s")
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""  # nothing from autobahn's imports either (bjdata, see setup.sh)
    line = r.stdout.strip()
    assert len(line.splitlines()) == 1
    assert f"{shared_node.ws} realm realm1: node edge1 (proxy" in line
    assert "-> router), join " in line and "publish->event" in line


def test_both_proxy_workers_serve_wamp(shared_node: CrossbarNode) -> None:
    seen: set[str | None] = set()
    for _ in range(40):  # the kernel spreads connections over the shared socket
        result = probe(shared_node.ws, "realm1", 10)
        assert result.node == "edge1" and result.worker == "router"
        seen.add(result.proxy_worker)
        if len(seen) == 2:
            break
    assert seen == {"proxy1", "proxy2"}


def test_probe_of_an_unknown_realm_names_the_join_step(shared_node: CrossbarNode) -> None:
    r = lbsync("probe", shared_node.ws, "--realm", "nosuchrealm", "--timeout", "5s")
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == [
        f"lbsync: error: probe {shared_node.ws}: join failed: wamp.error.no_such_realm "
        'no realm "nosuchrealm" exists on this router']


# --- the router: no TCP port, a private unix socket ---------------------------------------


def test_router_has_no_tcp_port_only_the_unix_socket(shared_node: CrossbarNode) -> None:
    procs = shared_node.processes()
    (router,) = [p for p in procs if "RouterController" in " ".join(p.cmdline())]
    assert [c for c in router.net_connections(kind="tcp") if c.status == psutil.CONN_LISTEN] \
        == [], "the router worker listens on TCP"
    socket_path = str(shared_node.cbdir / ROUTER_SOCKET)
    assert any(c.laddr == socket_path for c in router.net_connections(kind="unix"))
    # The only TCP port of the whole node is the one the proxy workers share.
    listening = {(c.laddr.ip, c.laddr.port) for p in procs
                 for c in p.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN}
    assert listening == {(shared_node.ip, shared_node.port)}
    # ...and WAMP through it reaches the router.
    result = probe(shared_node.ws, "realm1", 10)
    assert result.node == "edge1" and result.worker == "router"
    assert result.proxy_worker in {"proxy1", "proxy2"}


def _connect_as(uid: int, cbdir: Path, path: Path) -> str:
    """In a forked child running as `uid`: read CBDIR/config.json, then connect to `path`."""
    pid = os.fork()
    if pid == 0:  # the child: a few system calls, then _exit whatever happens
        code, denied = 99, 99
        try:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            denied = 10
            (cbdir / "config.json").read_bytes()
            denied = 11
            with socket.socket(socket.AF_UNIX) as s:
                s.connect(str(path))
            code = 0
        except PermissionError:
            code = denied
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    return {0: "connected", 10: "config.json denied", 11: "socket denied"}.get(
        code, f"exit {code}")


@pytest.mark.skipif(os.geteuid() != 0, reason="running a process as another user needs root")
def test_only_the_nodes_user_reaches_the_router_socket(shared_node: CrossbarNode) -> None:
    assert stat.S_IMODE((shared_node.cbdir / "run").stat().st_mode) == 0o700
    sock = shared_node.cbdir / ROUTER_SOCKET
    assert stat.S_ISSOCK(sock.stat().st_mode)  # itself 0666: Crossbar cannot set its mode
    nobody = 65534
    # CBDIR is open to another user; its run/ folder is not.
    assert _connect_as(nobody, shared_node.cbdir, sock) == "socket denied"
    assert _connect_as(os.geteuid(), shared_node.cbdir, sock) == "connected"


# --- the sidecar ---------------------------------------------------------------------------


@dataclass
class Sidecar:
    proc: subprocess.Popen[bytes]
    log_path: Path
    agent: tuple[str, int]
    stopped_file: Path

    def agent_says(self) -> str:
        try:
            with socket.create_connection(self.agent, timeout=2) as s:
                return s.makefile("rb").read().decode()
        except OSError:
            return ""

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@pytest.fixture
def sidecars(tmp_path: Path) -> Iterator[Callable[..., Sidecar]]:
    """Factory: `start(node, serf_agent, drain_timeout="30s") -> Sidecar` (lbsync node)."""
    started: list[Sidecar] = []

    def start(node: CrossbarNode, serf: SerfAgent, drain_timeout: str = "30s") -> Sidecar:
        agent_port = free_port(node.ip)
        stopped = tmp_path / f"{node.name}.stopped"
        log_path = tmp_path / f"sidecar-{node.name}.log"
        argv = [sys.executable, "-m", "lbsync", "node", *flags(
            "node", node_name=node.name, serf_rpc=serf.rpc_addr,
            listen=f"{node.ip}:{node.port}", agent_port=agent_port,
            drain_timeout=drain_timeout, stop_command=f"touch {stopped}")]
        with log_path.open("ab") as log:
            proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        sidecar = Sidecar(proc, log_path, (node.ip, agent_port), stopped)
        started.append(sidecar)
        return sidecar

    yield start
    for s in started:
        reap(s.proc, 5)


def member(lb: SerfAgent, name: str) -> Member | None:
    rpc = lb.rpc()
    try:
        return next((m for m in rpc.members() if m.name == name), None)
    finally:
        rpc.close()


def tag(lb: SerfAgent, name: str, key: str) -> str | None:
    m = member(lb, name)
    return m.tags.get(key) if m else None


def test_sidecar_sets_ready_once_crossbar_serves_then_drains_and_leaves(
        crossbar_nodes: StartNode, serf_agents: StartAgent, sidecars: Callable[..., Sidecar],
) -> None:
    node = crossbar_nodes("edge2", proxies=1, start=False)
    lb = serf_agents("lb")
    serf = serf_agents("edge2", join=lb)
    side = sidecars(node, serf)

    # Before Crossbar runs: tagged as an edge node, not ready, agent-check already up.
    wait_for(lambda: tag(lb, "edge2", "role") == "edge", 10, "role=edge on the lb agent")
    m = member(lb, "edge2")
    assert m is not None
    assert m.tags["ready"] == "0" and m.tags["port"] == str(node.port)
    assert m.tags["agent-port"] == str(side.agent[1])
    assert side.agent_says().startswith("up ")

    # Watch the order from the node's own agent (where the sidecar sets the tag, no gossip
    # in between): each sample reads the tag, then asks /info. Crossbar keeps answering once
    # it does, so a ready=1 read before an /info that does not answer was set too early.
    node.start()
    samples: list[tuple[bool, bool]] = []  # (ready=1, /info answered right after)

    def ready_in_order() -> bool:
        ready = tag(serf, "edge2", "ready") == "1"
        samples.append((ready, node.info_ok()))
        if ready and not samples[-1][1]:
            pytest.fail(f"ready=1 while /info does not answer yet (sample {len(samples)})")
        return ready

    wait_for(ready_in_order, 70, "ready=1")
    assert not samples[0][1], "/info answered at once: the order was not observed"
    wait_for(lambda: tag(lb, "edge2", "ready") == "1", 10, "ready=1 on the lb agent")
    # For a few seconds after ready=1 it also says `ready`, taking back a `maint` that a
    # stop which did not finish left on HAProxy.
    words = side.agent_says().split()
    assert words[:2] == ["ready", "up"] and words[2].endswith("%"), words
    assert 10 <= int(words[2].rstrip("%")) <= 100

    side.proc.send_signal(signal.SIGTERM)
    wait_for(lambda: side.agent_says() == "maint\n" or side.proc.poll() is not None, 5,
             "agent-check to say maint")
    wait_for(lambda: (m := member(lb, "edge2")) is not None and m.status == MemberStatus.LEFT,
             15, "edge2 to leave")
    assert tag(lb, "edge2", "ready") == "0"
    assert side.proc.wait(15) == 0, side.log()
    assert side.stopped_file.exists()
    log = side.log()
    for step in ("tags set:", "answers 200 after", "ready=1 (", "stop requested: draining",
                 "agent-check answers maint", "drained:", "left the serf cluster",
                 "stop command", "exit 0"):
        assert step in log, f"{step!r} not in the sidecar log:\n{log}"


def _ready_sidecar(node: CrossbarNode, serf_agents: StartAgent,
                   sidecars: Callable[..., Sidecar], name: str,
                   drain_timeout: str) -> tuple[SerfAgent, Sidecar]:
    lb = serf_agents(f"lb-{name}")
    serf = serf_agents(name, join=lb)
    side = sidecars(node, serf, drain_timeout=drain_timeout)
    wait_for(lambda: tag(lb, name, "ready") == "1", 15, f"{name} ready=1")
    return lb, side


def has_left(lb: SerfAgent, name: str) -> bool:
    m = member(lb, name)
    return m is not None and m.status == MemberStatus.LEFT


def test_held_connection_delays_the_leave_until_it_closes(
        shared_node: CrossbarNode, serf_agents: StartAgent,
        sidecars: Callable[..., Sidecar]) -> None:
    lb, side = _ready_sidecar(shared_node, serf_agents, sidecars, "edge1", "30s")
    held = socket.create_connection((shared_node.ip, shared_node.port), timeout=5)
    try:
        side.proc.send_signal(signal.SIGTERM)
        wait_for(lambda: tag(lb, "edge1", "ready") == "0", 5, "ready=0")
        time.sleep(2.0)
        assert not has_left(lb, "edge1"), "left while a connection was still open"
        assert side.proc.poll() is None
        assert "waiting for 1 connection(s)" in side.log()
    finally:
        held.close()
    closed_at = time.monotonic()
    wait_for(lambda: has_left(lb, "edge1"), 10, "the leave after the connection closed")
    assert time.monotonic() - closed_at < 5
    assert side.proc.wait(10) == 0, side.log()
    assert side.stopped_file.exists()


def test_drain_timeout_bounds_the_wait_for_a_held_connection(
        shared_node: CrossbarNode, serf_agents: StartAgent,
        sidecars: Callable[..., Sidecar]) -> None:
    lb, side = _ready_sidecar(shared_node, serf_agents, sidecars, "edge1", "2s")
    with socket.create_connection((shared_node.ip, shared_node.port), timeout=5):
        signalled = time.monotonic()
        side.proc.send_signal(signal.SIGTERM)
        took = wait_for(lambda: has_left(lb, "edge1"), 15, "the leave after the drain timeout")
        assert took >= 1.5  # not before the timeout...
        assert time.monotonic() - signalled < 8  # ...and not much after it
    assert side.proc.wait(10) == 0, side.log()
    assert "drain timeout: 1 connection(s) still open" in side.log()
