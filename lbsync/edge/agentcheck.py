"""HAProxy agent-check on an edge node: one ASCII line per TCP connection, then close.

HAProxy connects to `agent-port` every `agent-inter`, reads a line such as `up 75%` and
closes (configuration manual, `agent-check`). A percentage scales the server's configured
weight; `drain` stops new sessions except persistent ones.

The reply never says `ready` (nor `maint`): HAProxy applies `ready` by clearing the same
forced drain and maintenance flags lbsync sets through the Runtime API, so an agent that
said `ready` on every check would undo lbsync's own drain of a leaving node.
"""

from __future__ import annotations

import contextlib
import socket
import socketserver
import threading
from collections.abc import Callable
from typing import Protocol

import psutil

from ..model import LbsyncError

MIN_WEIGHT_PERCENT = 10  # a busy node still gets some traffic, and never weight 0 (= drain)
MAX_WEIGHT_PERCENT = 100


def agent_reply(idle_percent: float, draining: bool) -> str:
    """The line HAProxy reads: `drain` while shutting down, else `up N%` (N = CPU idle)."""
    if draining:
        return "drain\n"
    weight = min(MAX_WEIGHT_PERCENT, max(MIN_WEIGHT_PERCENT, round(idle_percent)))
    return f"up {weight}%\n"


class IdleSource(Protocol):
    @property
    def percent(self) -> float: ...
    def start(self) -> None: ...
    def stop(self) -> None: ...


def _idle_and_total() -> tuple[float, float]:
    t = psutil.cpu_times()
    # Linux counts guest time inside user and nice as well.
    guest = getattr(t, "guest", 0.0) + getattr(t, "guest_nice", 0.0)
    return t.idle, sum(t) - guest


class CpuIdle:
    """CPU idle %, measured by a background thread over each `interval` seconds.

    From psutil.cpu_times() deltas of our own: cpu_times_percent(interval=None) keeps one
    baseline per process, shared with any other caller.
    """

    def __init__(self, interval: float = 1.0,
                 sample: Callable[[], tuple[float, float]] = _idle_and_total) -> None:
        self.interval = interval
        self._sample = sample
        self._last: tuple[float, float] | None = None
        self._idle = 100.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def percent(self) -> float:
        return self._idle

    def update(self) -> None:
        """Take a sample; idle % over the time since the previous one."""
        idle, total = self._sample()
        if self._last is not None and total > self._last[1]:
            share = (idle - self._last[0]) / (total - self._last[1])
            # Float sums of cpu_times can land a hair outside 0-100 (seen: 100.0000000009).
            self._idle = min(100.0, max(0.0, 100.0 * share))
        self._last = (idle, total)

    def start(self) -> None:
        self.update()
        self._thread = threading.Thread(target=self._run, name="cpu-idle", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.update()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)


class AgentCheckError(LbsyncError):
    """The agent-check port cannot be listened on."""


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    agent: AgentCheck  # set before serving; the handler reads it


class _Server6(_Server):
    address_family = socket.AF_INET6


class _Handler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        server = self.server
        assert isinstance(server, _Server)
        with contextlib.suppress(OSError):  # HAProxy may close first; nothing to do then
            self.request.sendall(server.agent.reply().encode("ascii"))


class AgentCheck:
    """The agent-check TCP server: `start()`, `drain()` at shutdown, `close()`."""

    def __init__(self, host: str, port: int, idle: IdleSource | None = None) -> None:
        self.host = host
        self.port = port
        self.idle: IdleSource = idle or CpuIdle()
        self._draining = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def draining(self) -> bool:
        return self._draining.is_set()

    def reply(self) -> str:
        return agent_reply(self.idle.percent, self.draining)

    def start(self) -> None:
        server_class = _Server6 if ":" in self.host else _Server
        try:
            server = server_class((self.host, self.port), _Handler)
        except OSError as e:
            raise AgentCheckError(f"agent-check cannot listen on {self.host}:{self.port}: "
                                  f"{e.strerror or e}") from None
        server.agent = self
        self.port = server.server_address[1]  # the real one when asked for port 0
        self._server = server
        self.idle.start()
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="agent-check", daemon=True)
        self._thread.start()

    def drain(self) -> None:
        self._draining.set()

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        self.idle.stop()
