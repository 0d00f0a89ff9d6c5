"""HAProxy agent-check on an edge node: one ASCII line per TCP connection, then close.

HAProxy connects to `agent-port` every `agent-inter`, reads a line such as `up 75%` and
closes (configuration manual, `agent-check`). A percentage scales the server's configured
weight.

While the node stops, the answer is `maint`, not `drain`: HAProxy's drain still sends
every client carrying the node's cookie there, maintenance sends them to another server
(`option redispatch`) and lets the open sessions finish. HAProxy sets the same bit for it
(SRV_ADMF_FMAINT) as for `set server ... state maint`, and the agent-check keeps running in
maintenance (only the health check pauses), so the agent can take it back.

It takes it back with `ready`, and only for READY_FOR seconds after `resume()`: `ready`
clears the forced drain and maintenance flags whoever set them, so an agent that said it on
every check would undo lbsync's own hold of a leaving node, or an operator's. The sidecar
resumes when the node says ready=1, which also clears a `maint` left behind by a sidecar
that was stopped (killed) in the middle of its stop.
"""

from __future__ import annotations

import contextlib
import socket
import socketserver
import threading
import time
from collections.abc import Callable
from typing import Protocol

import psutil

from ..model import LbsyncError

MIN_WEIGHT_PERCENT = 10  # a busy node still gets some traffic, and never weight 0 (= drain)
MAX_WEIGHT_PERCENT = 100
# How long `ready` is said after resume(): several agent-inter (lbsync's is --check-inter,
# 1 s), so at least one check reads it.
READY_FOR = 10.0


def agent_reply(idle_percent: float, stopping: bool, undo: bool = False) -> str:
    """The line HAProxy reads: `maint` while stopping, else `up N%` (N = CPU idle), with
    `ready` first while a stop's maintenance is being undone."""
    if stopping:
        return "maint\n"
    weight = min(MAX_WEIGHT_PERCENT, max(MIN_WEIGHT_PERCENT, round(idle_percent)))
    return f"ready up {weight}%\n" if undo else f"up {weight}%\n"


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
    """The agent-check TCP server: `start()`, `resume()` once serving, `maint()` at the
    stop, `close()`."""

    def __init__(self, host: str, port: int, idle: IdleSource | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.host = host
        self.port = port
        self.idle: IdleSource = idle or CpuIdle()
        self.clock = clock
        self._stopping = threading.Event()
        self._ready_until = float("-inf")
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def reply(self) -> str:
        return agent_reply(self.idle.percent, self.stopping,
                           undo=self.clock() < self._ready_until)

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

    def maint(self) -> None:
        """The node stops: no new connection, sticky or not."""
        self._stopping.set()

    def resume(self) -> None:
        """The node serves (again): say `ready` for READY_FOR seconds, undoing a `maint`
        this node's agent set before (a stop that did not finish)."""
        self._stopping.clear()
        self._ready_until = self.clock() + READY_FOR

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        self.idle.stop()
