"""The sidecar's sequence, driven by fakes: a clock that jumps, a Serf that records."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from types import SimpleNamespace

import pytest
from click.testing import CliRunner

from lbsync import __version__
from lbsync.cli import main
from lbsync.edge import links, sidecar
from lbsync.edge.sidecar import (
    Effects,
    NodeConfig,
    Sidecar,
    established,
    info_answers,
    validate_node_config,
)
from lbsync.model import LbsyncError, Member, MemberStatus
from lbsync.serf.rpc import SerfAuthError, SerfError

CONFIG = NodeConfig(name="node1", serf_rpc=("127.0.0.1", 7373), host="127.0.0.11", port=8080,
                    agent_port=8081, drain_timeout=30.0, stop_command="stop crossbar")


class World:
    """Everything the sidecar touches, recording what it did and when (fake seconds)."""

    def __init__(self) -> None:
        self.t = 0.0
        self.events: list[tuple[float, str]] = []
        self.stop = threading.Event()
        self.stop_at: float | None = None
        self.ready_at = 0.0  # /info answers from then on
        self.serf_up_at = 0.0
        self.connections_until: float = 0.0  # connections stay open until then
        self.fail_leave = False
        self.command_status = 0
        self.auth_error = False
        self.tag_failures = 0  # so many tag updates fail (connection still open)
        self.serf: FakeSerf | None = None
        self.resumed: list[float] = []  # when the agent-check was told to say `ready`
        self.actions: list[tuple[float, Callable[[], None]]] = []

    # clock
    def now(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        assert seconds >= 0
        self.t += seconds
        if self.stop_at is not None and self.t >= self.stop_at:
            self.stop.set()
        for when, action in list(self.actions):
            if self.t >= when:
                self.actions.remove((when, action))
                action()

    def note(self, what: str) -> None:
        self.events.append((self.t, what))

    def names(self) -> list[str]:
        return [what for _, what in self.events]

    def time_of(self, what: str) -> float:
        return next(t for t, w in self.events if w == what)

    # effects
    def connect_serf(self) -> FakeSerf:
        if self.auth_error:
            raise SerfAuthError("refused the RPC auth key")
        if self.t < self.serf_up_at:
            self.note("connect refused")
            raise SerfError("connection refused")
        self.note("connect")
        self.serf = FakeSerf(self)
        return self.serf

    def ready(self) -> bool:
        return self.t >= self.ready_at

    def connections(self) -> int:
        return 2 if self.t < self.connections_until else 0

    def run_command(self, command: str) -> int:
        self.note(f"run {command}")
        return self.command_status

    def effects(self) -> Effects:
        return Effects(connect_serf=self.connect_serf, agent=FakeAgent(self), ready=self.ready,
                       connections=self.connections, run_command=self.run_command,
                       clock=self)


@dataclass
class FakeSerf:
    world: World
    closed: bool = False
    tags_seen: list[dict[str, str]] = field(default_factory=list)

    def tags(self, set: Mapping[str, str] | None = None,
             delete: Iterable[str] | None = None) -> None:
        if self.closed:
            raise SerfError("connection lost")
        if self.world.tag_failures > 0:
            self.world.tag_failures -= 1
            self.world.note("tags failed")
            raise SerfError("did not answer 'tags' within 5 s")
        self.tags_seen.append(dict(set or {}))
        self.world.note(f"tags ready={(set or {})['ready']}")

    def leave(self, timeout: float = 30.0) -> None:
        if self.world.fail_leave:
            raise SerfError("leave failed: boom")
        self.world.note("leave")
        self.closed = True  # the agent shuts down after a leave

    def close(self) -> None:
        self.closed = True


@dataclass
class FakeAgent:
    world: World

    def start(self) -> None:
        self.world.note("agent start")

    def maint(self) -> None:
        self.world.note("agent maint")

    def resume(self) -> None:
        self.world.resumed.append(self.world.t)

    def close(self) -> None:
        self.world.note("agent close")


def run(world: World, config: NodeConfig = CONFIG) -> int:
    return Sidecar(config, world.effects(), world.stop).run()


def test_full_life_in_order() -> None:
    w = World()
    w.ready_at, w.stop_at, w.connections_until = 3.0, 10.0, 12.0
    assert run(w) == 0
    assert w.names() == [
        "agent start", "connect", "tags ready=0", "tags ready=1",
        "agent maint", "tags ready=0", "leave", "run stop crossbar", "agent close",
    ]
    assert 3.0 <= w.time_of("tags ready=1") < 3.3
    # The agent-check takes back a `maint` an unfinished stop left, as ready=1 goes out.
    assert w.resumed == [w.time_of("tags ready=1")]
    assert w.time_of("agent maint") >= 10.0
    # The leave waits for the connections, the stop command for the load balancer.
    assert 12.0 <= w.time_of("leave") < 12.3
    assert w.time_of("run stop crossbar") - w.time_of("leave") == pytest.approx(1.0)


def test_tags_name_the_node_for_the_load_balancer() -> None:
    w = World()
    w.stop_at = 1.0
    run(w, replace(CONFIG, weight=50))
    assert w.serf is not None
    first, ready, leaving = w.serf.tags_seen
    assert first == {"role": "edge", "port": "8080", "agent-port": "8081",
                     "version": __version__, "ready": "0", "weight": "50"}
    assert ready["ready"] == "1" and leaving["ready"] == "0"


def test_no_weight_tag_unless_asked() -> None:
    assert "weight" not in CONFIG.tags(ready=True)


def test_drain_timeout_bounds_the_wait(caplog: pytest.LogCaptureFixture) -> None:
    w = World()
    w.stop_at, w.connections_until = 5.0, 1000.0
    caplog.set_level(logging.INFO, "lbsync.edge.sidecar")
    assert run(w, replace(CONFIG, drain_timeout=4.0)) == 0
    assert w.time_of("leave") - w.time_of("agent maint") == pytest.approx(4.0, abs=0.3)
    assert "drain timeout: 2 connection(s) still open" in caplog.text


def test_waits_for_serf_with_backoff_and_logs_once(caplog: pytest.LogCaptureFixture) -> None:
    w = World()
    w.serf_up_at, w.stop_at = 6.0, 20.0
    caplog.set_level(logging.INFO, "lbsync.edge.sidecar")
    assert run(w) == 0
    refused = [t for t, what in w.events if what == "connect refused"]
    gaps = [b - a for a, b in zip(refused, refused[1:], strict=False)]
    assert gaps == sorted(gaps) and max(gaps) <= sidecar.SERF_BACKOFF_MAX + 1e-6
    assert len(refused) < 10  # backoff, not a tight loop
    assert caplog.text.count("waiting for the serf agent") == 1
    assert w.time_of("connect") >= 6.0


def test_stop_before_serf_answers_still_runs_the_stop_command() -> None:
    w = World()
    w.serf_up_at, w.stop_at = 1000.0, 2.0
    assert run(w) == 0
    assert "leave" not in w.names() and "tags ready=0" not in w.names()
    assert w.names()[-2:] == ["run stop crossbar", "agent close"]


def test_stop_before_ready_drains_and_leaves() -> None:
    w = World()
    w.ready_at, w.stop_at = 1000.0, 2.0
    assert run(w) == 0
    assert "tags ready=1" not in w.names()
    assert w.names()[-4:] == ["tags ready=0", "leave", "run stop crossbar", "agent close"]


def test_lost_serf_connection_is_tagged_again() -> None:
    w = World()
    w.stop_at = 10.0

    def drop() -> None:
        assert w.serf is not None
        w.serf.closed = True

    w.actions.append((4.0, drop))
    assert run(w) == 0
    assert w.names()[:6] == ["agent start", "connect", "tags ready=0", "tags ready=1",
                             "connect", "tags ready=1"]


def test_serf_lost_before_ready_is_reconnected_then_ready() -> None:
    w = World()
    w.ready_at, w.stop_at = 5.0, 10.0

    def drop() -> None:
        assert w.serf is not None
        w.serf.closed = True

    w.actions.append((2.0, drop))
    assert run(w) == 0
    assert w.names()[:5] == ["agent start", "connect", "tags ready=0", "connect",
                             "tags ready=0"]
    assert 5.0 <= w.time_of("tags ready=1") < 5.3


def test_failing_tag_update_is_retried_and_logged_once(
        caplog: pytest.LogCaptureFixture) -> None:
    w = World()
    w.stop_at, w.tag_failures = 5.0, 3
    caplog.set_level(logging.INFO, "lbsync.edge.sidecar")
    assert run(w) == 0
    assert w.names()[:6] == ["agent start", "connect", "tags failed", "tags failed",
                             "tags failed", "tags ready=0"]
    assert caplog.text.count("setting tags failed (retrying)") == 1
    assert "tags ready=1" in w.names()


def test_failed_leave_exits_1_after_the_stop_command() -> None:
    w = World()
    w.stop_at, w.fail_leave = 1.0, True
    assert run(w) == 1
    assert "run stop crossbar" in w.names()


def test_failed_stop_command_exits_1() -> None:
    w = World()
    w.stop_at, w.command_status = 1.0, 2
    assert run(w) == 1


def test_refused_auth_key_is_not_retried() -> None:
    w = World()
    w.auth_error = True
    with pytest.raises(SerfAuthError):
        run(w)
    assert w.names() == ["agent start", "agent close"]


@pytest.mark.parametrize(("change", "fragment"), [
    ({"name": "bad name"}, "--name"),
    ({"host": "localhost"}, "--listen"),
    ({"agent_port": 0}, "--agent-port"),
    ({"agent_port": 8080}, "also the --listen port"),
    ({"weight": 300}, "--weight"),
    ({"drain_timeout": -1.0}, "--drain-timeout"),
])
def test_bad_config_is_refused(change: dict[str, object], fragment: str) -> None:
    with pytest.raises(LbsyncError, match=fragment):
        validate_node_config(replace(CONFIG, **change))  # type: ignore[arg-type]


def test_node_command_refuses_bad_flags_in_one_line() -> None:
    result = CliRunner().invoke(main, [
        "node", "--name", "node1", "--serf-rpc", "127.0.0.1:7373", "--listen", "127.0.0.1:8080",
        "--agent-port", "8080"],
        env={"LBSYNC_LOG_LEVEL": None, "LBSYNC_SERF_RPC": None})
    assert result.exit_code == 1
    assert result.stderr.strip() == (
        "lbsync: error: --agent-port: 8080 is also the --listen port")


# --- the real effects, on fakes of psutil and a loopback HTTP server ---------------------


def conn(laddr: tuple[str, int], status: str = "ESTABLISHED") -> SimpleNamespace:
    return SimpleNamespace(laddr=SimpleNamespace(ip=laddr[0], port=laddr[1]), status=status)


def test_established_counts_only_the_service_port(monkeypatch: pytest.MonkeyPatch) -> None:
    table = [
        conn(("127.0.0.11", 8080)), conn(("::ffff:127.0.0.11", 8080)),
        conn(("127.0.0.11", 8080), "TIME_WAIT"), conn(("127.0.0.11", 8081)),
        conn(("127.0.0.12", 8080)), conn(("127.0.0.1", 40000)),
    ]
    monkeypatch.setattr(sidecar.psutil, "net_connections", lambda kind: table)
    assert established("127.0.0.11", 8080) == 2
    assert established("0.0.0.0", 8080) == 3


def test_info_answers_200_only() -> None:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            self.send_response(200 if self.path == "/info" else 404)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        assert info_answers("127.0.0.1", server.server_address[1]) is True
    finally:
        server.shutdown()
        server.server_close()
    assert info_answers("127.0.0.1", server.server_address[1]) is False


# --- the router links ------------------------------------------------------------------------


def edge(name: str, ready: str = "1", status: MemberStatus = MemberStatus.ALIVE,
         **tags: str) -> Member:
    n = int(name.removeprefix("node"))
    return Member(name, f"127.0.0.{10 + n}", {"role": "edge", "port": "8080", "ready": ready,
                                             "link-port": "8082", **tags}, status)


class LinkWorld(World):
    """A World whose Serf lists members and whose router reports links (fake files)."""

    def __init__(self, members: list[Member]) -> None:
        super().__init__()
        self.members = members
        self.enabled = True
        self.up_at: dict[str, float] = {}  # peer -> when its link comes up
        self.down_at: dict[str, float] = {}  # peer -> when its link goes down
        self.incoming_at: dict[str, float] = {}  # peer -> when the peer's link to here is up
                                                 # (default: with this one)
        self.wanted: list[dict[str, links.Peer]] = []

    def write_wanted(self, peers: Mapping[str, links.Peer]) -> bool:
        if not self.wanted or self.wanted[-1] != peers:
            self.wanted.append(dict(peers))
            return True
        return False

    def read_state(self) -> links.LinksReport | None:
        wanted = self.wanted[-1] if self.wanted else {}
        def between(start: float, name: str) -> bool:
            return start <= self.t < self.down_at.get(name, 1e9)

        return links.LinksReport(1, self.t, {
            name: links.LinkState(
                name, p.url, between(self.up_at.get(name, 1e9), name), 0.0, 0, 0,
                between(self.incoming_at.get(name, self.up_at.get(name, 1e9)), name))
            for name, p in wanted.items()})

    def effects(self) -> Effects:
        fx = super().effects()
        fx.links = SimpleNamespace(enabled=lambda: self.enabled, write_wanted=self.write_wanted,
                                   read_state=self.read_state)  # type: ignore[assignment]
        return fx

    def connect_serf(self) -> FakeSerf:
        serf = super().connect_serf()
        serf.members = lambda: list(self.members)  # type: ignore[attr-defined]
        return serf


LINKED = replace(CONFIG, cbdir=Path("/cbdir"))


def test_ready_waits_for_the_links_to_the_serving_peers(caplog: pytest.LogCaptureFixture) -> None:
    # node2 serves, node3 is still starting (ready=0), node4 left: only node2 gates.
    w = LinkWorld([edge("node1", "0"), edge("node2"), edge("node3", "0"),
                   edge("node4", status=MemberStatus.LEFT)])
    w.ready_at, w.stop_at = 1.0, 25.0
    w.up_at = {"node2": 4.0, "node3": 50.0}
    caplog.set_level(logging.INFO, "lbsync.edge.sidecar")
    assert run(w, LINKED) == 0
    assert set(w.wanted[-1]) == {"node2", "node3"}  # never itself, never a departed one
    assert w.wanted[-1]["node2"].url == "ws://127.0.0.12:8082/ws"
    assert 4.0 <= w.time_of("tags ready=1") < 4.0 + sidecar.LINK_POLL + 0.5
    assert "ready=1 waits for the router links to node2" in caplog.text
    assert "router link to node2 up (ws://127.0.0.12:8082/ws)" in caplog.text
    assert w.serf is not None
    ready = next(t for t in w.serf.tags_seen if t["ready"] == "1")
    assert ready["link-port"] == "8082"
    # The count is gossiped to everyone: it changes at most every LINKS_TAG_EVERY seconds.
    counts = [(t, tags["links"]) for t, tags in zip(
        [t for t, what in w.events if what.startswith("tags ")], w.serf.tags_seen,
        strict=True)]
    assert counts[0] == (0.0, "0/2") and counts[-1][1] == "1/2"
    changes = [t for (t, c), (_, before) in zip(counts[1:], counts, strict=False) if c != before]
    assert changes and all(b - a >= sidecar.LINKS_TAG_EVERY
                           for a, b in zip([0.0, *changes], changes, strict=False))


def test_ready_also_waits_for_the_peers_link_to_this_node() -> None:
    # This node's link to node2 is up at once; node2's link back (its callees' way here)
    # only at 6 s: the clients here could not call node2's procedures before.
    w = LinkWorld([edge("node1", "0"), edge("node2")])
    w.stop_at = 12.0
    w.up_at, w.incoming_at = {"node2": 0.0}, {"node2": 6.0}
    assert run(w, LINKED) == 0
    assert 6.0 <= w.time_of("tags ready=1") < 6.0 + sidecar.LINK_POLL + 0.5
    # Every link up is said at once, whatever the tag's rate limit.
    assert w.serf is not None
    assert next(t for t in w.serf.tags_seen if t["ready"] == "1")["links"] == "1/1"


def test_a_link_going_down_later_is_logged_but_ready_stays(
        caplog: pytest.LogCaptureFixture) -> None:
    w = LinkWorld([edge("node1", "0"), edge("node2")])
    w.stop_at = 20.0
    w.up_at, w.down_at = {"node2": 0.0}, {"node2": 5.0}
    caplog.set_level(logging.INFO, "lbsync.edge.sidecar")
    assert run(w, LINKED) == 0
    assert "router link to node2 down (ws://127.0.0.12:8082/ws)" in caplog.text
    # ready=1 once, then ready=0 only for the drain at the stop.
    assert [t for t, what in w.events if what == "tags ready=1"][0] < 2.0
    assert w.time_of("tags ready=0") == 0.0 and w.time_of("agent maint") >= 20.0
    assert w.serf is not None
    assert [t["links"] for t in w.serf.tags_seen if t["ready"] == "1"][-1] == "0/1"


def test_a_peer_that_leaves_is_unlinked(caplog: pytest.LogCaptureFixture) -> None:
    w = LinkWorld([edge("node1"), edge("node2"), edge("node3")])
    w.stop_at = 8.0
    w.up_at = {"node2": 0.0, "node3": 0.0}
    w.actions.append((4.0, lambda: setattr(
        w, "members", [edge("node1"), edge("node2"), edge("node3", status=MemberStatus.LEFT)])))
    caplog.set_level(logging.INFO, "lbsync.edge.sidecar")
    assert run(w, LINKED) == 0
    assert set(w.wanted[-1]) == {"node2"}
    assert "router link to node3 removed: node3 left the cluster" in caplog.text


def test_a_peer_whose_router_never_answers_delays_ready_by_links_wait_only(
        caplog: pytest.LogCaptureFixture) -> None:
    w = LinkWorld([edge("node1", "0"), edge("node2"), edge("node3")])
    w.stop_at = 30.0
    w.up_at = {"node2": 1.0}  # node3's router never takes the link
    caplog.set_level(logging.INFO, "lbsync.edge.sidecar")
    assert run(w, replace(LINKED, links_wait=12.0)) == 0
    assert 12.0 <= w.time_of("tags ready=1") < 12.0 + sidecar.LINK_POLL + 0.5
    assert "ready=1 without the router links to node3: not up after 12 s" in caplog.text


def test_links_off_means_no_link_tags_and_no_wait() -> None:
    w = LinkWorld([edge("node1", "0"), edge("node2")])
    w.enabled = False
    w.stop_at = 5.0
    assert run(w, LINKED) == 0
    assert w.wanted == [] and w.time_of("tags ready=1") < 0.5
    assert w.serf is not None
    assert all("links" not in t and "link-port" not in t for t in w.serf.tags_seen)


def test_link_port_must_differ_from_the_service_ports() -> None:
    with pytest.raises(LbsyncError, match="--link-port: 8081 is also"):
        validate_node_config(replace(CONFIG, link_port=8081))
    with pytest.raises(LbsyncError, match="--link-port: 0 is outside"):
        validate_node_config(replace(CONFIG, link_port=0))
    with pytest.raises(LbsyncError, match="--links-wait cannot be negative"):
        validate_node_config(replace(CONFIG, links_wait=-1))


def test_the_router_socket_is_made_private(tmp_path: Path) -> None:
    import socket as sockets
    import stat

    path = tmp_path / "router.sock"
    assert sidecar.make_private(path) is None  # not there yet: nothing to do
    with sockets.socket(sockets.AF_UNIX) as s:
        s.bind(str(path))
        path.chmod(0o666)  # what Twisted leaves
        assert sidecar.make_private(path) == f"router socket {path} was 0666: made 0600"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert sidecar.make_private(path) is None  # once
