"""Real `serf agent` processes on loopback, for the integration tests.

Each agent gets its own 127.0.0.x address and free ports, and every process a test
starts is killed when the test ends, pass or fail.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import socket
import subprocess
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from lbsync.serf.agent_cmd import serf_agent_argv
from lbsync.serf.rpc import SerfRPC
from tests.rig.procs import StackError, free_port, kill, reap, wait_for

# 127.0.0.1 is left to other fixtures; the pid spreads concurrent test runs apart.
_ADDRS = itertools.cycle(range(20 + os.getpid() % 100, 20 + os.getpid() % 100 + 100))


@dataclass
class SerfAgent:
    name: str
    ip: str
    bind_port: int
    rpc_port: int
    log_path: Path
    tags: Mapping[str, str] = field(default_factory=dict)
    event_handler: str | None = None
    auth_key: str | None = None
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def bind_addr(self) -> str:
        return f"{self.ip}:{self.bind_port}"

    @property
    def rpc_addr(self) -> str:
        return f"{self.ip}:{self.rpc_port}"

    def start(self, join: str | None = None, wait: float = 10.0) -> None:
        conf = None
        if self.auth_key is not None:
            # There is no -rpc-auth flag for the agent; the key lives in its config.
            conf = self.log_path.with_suffix(".json")
            conf.write_text(json.dumps({"rpc_auth": self.auth_key}))
        # "local" probes every second: failure shows up in ~5 s, not ~7 s.
        argv = serf_agent_argv(
            self.name, self.bind_addr, self.rpc_addr, profile="local", log_level="debug",
            tags=self.tags, event_handler=self.event_handler, join=join or (),
            config_file=conf)
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        self._wait_rpc(wait)

    def _wait_rpc(self, timeout: float) -> None:
        def up() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"serf agent {self.name} exited:\n{self.log_tail()}")
            socket.create_connection((self.ip, self.rpc_port), timeout=0.5).close()
            return True

        try:
            wait_for(up, timeout, f"serf agent {self.name} RPC", 0.02)
        except StackError:
            raise RuntimeError(f"serf agent {self.name} RPC not up:\n{self.log_tail()}") from None

    def rpc(self, auth_key: str | None = None, timeout: float = 5.0) -> SerfRPC:
        """A connected client (the caller closes it)."""
        rpc = SerfRPC(self.ip, self.rpc_port, auth_key or self.auth_key, timeout)
        rpc.connect()
        return rpc

    def kill(self) -> None:
        """SIGKILL: the agent vanishes without a leave, as a crashed machine does."""
        if self.proc is not None:
            kill(self.proc)

    def terminate(self) -> None:
        """SIGTERM, SIGKILL when it is not gone within 10 s."""
        if self.proc is not None:
            reap(self.proc, 10)

    def wait_exit(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


StartAgent = Callable[..., SerfAgent]


@pytest.fixture
def serf_agents(tmp_path: Path) -> Iterator[StartAgent]:
    """Factory: `start(name, join=None, tags=None, event_handler=None, auth_key=None) ->
    SerfAgent` (running).

    `join` may be another SerfAgent. All agents are killed at teardown.
    """
    if shutil.which("serf") is None:
        pytest.skip("serf is not on PATH")
    agents: list[SerfAgent] = []

    def start(
        name: str,
        join: SerfAgent | str | None = None,
        tags: Mapping[str, str] | None = None,
        event_handler: str | None = None,
        auth_key: str | None = None,
    ) -> SerfAgent:
        ip = f"127.0.0.{next(_ADDRS)}"
        bind_port = free_port(ip, udp_too=True)
        # Both probe sockets are closed by now, so the kernel may hand out the same port
        # twice; serf then fails to bind its RPC listener (seen in CI).
        rpc_port = free_port(ip)
        while rpc_port == bind_port:
            rpc_port = free_port(ip)
        agent = SerfAgent(
            name=name, ip=ip, bind_port=bind_port, rpc_port=rpc_port,
            log_path=tmp_path / f"serf-{name}.log", tags=tags or {},
            event_handler=event_handler, auth_key=auth_key,
        )
        agents.append(agent)
        agent.start(join.bind_addr if isinstance(join, SerfAgent) else join)
        return agent

    yield start
    for agent in agents:
        try:
            agent.kill()
        except Exception:  # keep killing the others
            if agent.proc is not None:
                agent.proc.kill()
