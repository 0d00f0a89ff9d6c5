"""`lbsync probe`: what it prints, and how it fails (no router needed)."""

from __future__ import annotations

import importlib.util
import socket
import sys

import pytest
from click.testing import CliRunner, Result

from lbsync.cli import main
from lbsync.edge.probe import EDGE_EXTRA, ProbeResult, served_by

needs_autobahn = pytest.mark.skipif(importlib.util.find_spec("autobahn") is None,
                                    reason="autobahn (the edge extra) is not installed")


def run(args: list[str]) -> Result:
    return CliRunner().invoke(main, ["probe", *args],
                              env={"LBSYNC_REALM": None, "LBSYNC_LOG_LEVEL": None})


def one_error_line(result: Result) -> str:
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("lbsync: error: ")
    return lines[0]


def test_node_comes_from_crossbar_welcome_keys() -> None:
    extra = {"x_cb_node": "node1", "x_cb_worker": "router", "x_cb_proxy_worker": "proxy2",
             "x_cb_pid": 42}
    assert served_by(extra) == ("node1", "router", "proxy2")
    assert served_by({"x_cb_node": "node1", "x_cb_worker": "worker001"}) == (
        "node1", "worker001", None)
    assert served_by(None) == (None, None, None)


def test_result_is_one_line() -> None:
    r = ProbeResult("ws://h:1/ws", "realm1", "node1", "router", "proxy2", 31.25, 2.5, 1.04)
    assert r.line() == ("ws://h:1/ws realm realm1: node node1 (proxy2 -> router), "
                        "join 31.2 ms, call 2.5 ms, publish->event 1.0 ms")
    bare = ProbeResult("ws://h:1/ws", "realm1", None, None, None, 1, 1, 1)
    assert "node ? ," not in bare.line() and "node ?, join" in bare.line()


def test_without_the_edge_extra_it_says_how_to_get_it(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("autobahn", "autobahn.asyncio", "autobahn.asyncio.wamp"):
        monkeypatch.setitem(sys.modules, name, None)
    line = one_error_line(run(["ws://127.0.0.1:1/ws"]))
    assert line == f"lbsync: error: {EDGE_EXTRA}"


@needs_autobahn
def test_nothing_listening_fails_at_connect() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again before the probe runs
    line = one_error_line(run([f"ws://127.0.0.1:{port}/ws", "--timeout", "3s"]))
    assert line.startswith(f"lbsync: error: probe ws://127.0.0.1:{port}/ws: connect failed")


@needs_autobahn
def test_a_silent_server_fails_at_join_within_the_timeout() -> None:
    with socket.socket() as server:  # accepts, never answers the WebSocket upgrade
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        line = one_error_line(run([f"ws://127.0.0.1:{port}/ws", "--timeout", "500ms"]))
    assert line == (f"lbsync: error: probe ws://127.0.0.1:{port}/ws: join failed: "
                    "no answer within 0.5 s")


@needs_autobahn
def test_bad_url_is_refused() -> None:
    line = one_error_line(run(["http://127.0.0.1:1/ws"]))
    assert "url failed" in line and "not for WebSocket" in line
