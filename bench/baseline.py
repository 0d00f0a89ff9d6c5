"""The reload-per-change baseline as a DevStack: HAProxy as a plain daemon, no lbsync agent.

The load balancer's Serf agent runs bench/baseline_handler.sh on every event, which
re-renders haproxy.cfg and reloads with `haproxy -D -sf` (the classroom lab's wiring).
Everything else (addresses, members, backends) is the devstack's, so both modes of
bench/run.py differ only in how HAProxy follows the cluster.
"""

from __future__ import annotations

import contextlib
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import psutil

from bench.common import BENCH, haproxy_processes
from lbsync.cluster.addresses import SERF_PORT, SERF_RPC_PORT
from lbsync.serf.agent_cmd import serf_agent_argv
from tests.rig.devstack import DevStack
from tests.rig.haproxy import wait_ready
from tests.rig.procs import StackError, wait_for


@dataclass
class BaselineStack(DevStack):
    def __post_init__(self) -> None:
        self.handler_mode = True  # no --serf-rpc in the render flags

    @property
    def pidfile(self) -> Path:
        return self.workdir / "haproxy.pid"

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.paths["registry"].mkdir(exist_ok=True)
        (self.workdir / "baseline.env").write_text(
            f"PYTHON={shlex.quote(sys.executable)}\n"
            f"RENDER_FLAGS={shlex.quote(shlex.join(self.settings_flags()))}\n")
        self.pidfile.write_text("")
        (self.workdir / "reloads.log").write_text("")
        # The first start is a reload with no old process; it is not counted as one.
        self._handler("member-join", "")
        (self.workdir / "reloads.log").write_text("")
        wait_ready(self.runtime(), timeout=10)
        argv = serf_agent_argv(
            "lb", f"{self.lb_ip}:{SERF_PORT}", f"{self.lb_ip}:{SERF_RPC_PORT}",
            profile="local", tags={"role": "lb"},
            event_handler=f"{BENCH / 'baseline_handler.sh'} {self.workdir}")
        self.spawn("serf-lb", argv)
        wait_for(lambda: self.rpc_ok(self.lb_ip), 10, "the load balancer's Serf agent")

    def _handler(self, event: str, stdin: str) -> None:
        r = subprocess.run([str(BENCH / "baseline_handler.sh"), str(self.workdir)],
                           input=stdin, text=True, capture_output=True, check=False,
                           env={"SERF_EVENT": event, "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
        if r.returncode != 0:
            raise StackError(f"baseline handler failed: {r.stderr.strip()}")

    def reload_count(self) -> int:
        return len((self.workdir / "reloads.log").read_text().splitlines())

    def reload_times(self) -> list[float]:
        return [float(line.split()[0])
                for line in (self.workdir / "reloads.log").read_text().splitlines()]

    def stop(self) -> None:
        super().stop()
        for p in haproxy_processes(self.workdir / "haproxy.cfg"):
            with contextlib.suppress(psutil.Error):
                p.kill()
