"""A load balancer and its members as plain processes on loopback addresses.

This is the smallest real system lbsync runs in: HAProxy (master-worker), the load
balancer's Serf agent, `lbsync agent`, and members that are each a Serf agent plus a
light HTTP member (tests.rig.httpmember), every one of them on its own 127.N.0.x address
of lbsync.cluster.addresses' plan. The integration tests and the benchmark both drive it,
so the two see the same thing.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from lbsync.cluster import addresses as A
from lbsync.cluster.addresses import HTTP_PORT, SERF_PORT, SERF_RPC_PORT
from lbsync.haproxy.master import MasterCLI
from lbsync.haproxy.runtime import RuntimeAPI
from lbsync.model import LbsyncError, ServerState
from lbsync.serf.agent_cmd import serf_agent_argv
from lbsync.settings import flags

from .haproxy import start_master, wait_ready
from .procs import StackError, kill, reap, reap_all, wait_for

# The checkout: a child running `python -m tests.rig.httpmember` imports it from here.
ROOT = Path(__file__).resolve().parents[2]


def need(binary: str) -> str:
    path = shutil.which(binary)
    if path is None:
        raise StackError(f"{binary} not found on PATH (apt-get install -y {binary})")
    return path


def http_member_argv(listens: list[tuple[str, str]]) -> list[str]:
    """The light HTTP member answering as NAME on IP:HTTP_PORT, for each (NAME, IP)."""
    argv = [sys.executable, "-m", "tests.rig.httpmember"]
    for name, ip in listens:
        argv += ["--listen", f"{ip}:{HTTP_PORT}={name}"]
    return argv


def checkout_env() -> dict[str, str]:
    """The environment of a child that imports tests.rig: the checkout on PYTHONPATH."""
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": str(ROOT) + (os.pathsep + path if path else "")}


@dataclass
class StackMember:
    """A member of the stack: its Serf agent and its light HTTP member."""

    name: str
    ip: str
    serf: subprocess.Popen[bytes] | None = None
    http: subprocess.Popen[bytes] | None = None


@dataclass
class DevStack:
    workdir: Path
    net: int = 0  # the N of 127.N.0.x, so parallel stacks do not collide
    handler_mode: bool = False  # classic wiring: serf -event-handler 'lbsync handle'
    # The haproxy executable HAProxy runs from, and lbsync's --haproxy-bin (haproxy -c, -v).
    haproxy_bin: str = "haproxy"
    # Serf's timing profile for every agent of the stack. `local` (gossip every 100 ms,
    # 200 ms probe timeout) detects a crash in about a second, which the tests and the
    # failure benchmarks rely on. The images run Serf's default, `lan`, which costs a
    # quarter of the CPU: the scale benchmark uses it, as `--scale node=200` would.
    serf_profile: str = "local"
    # A command the members' Serf agents run under (e.g. `chrt --idle 0`); none: as the
    # load balancer's. The scale benchmark lowers them: on one machine they stand in for
    # other hosts, and 200 of them must not take the CPU the load balancer's processes
    # would have to themselves.
    member_wrapper: list[str] = field(default_factory=list)
    agent_args: list[str] = field(default_factory=list)
    # Settings flags every lbsync command of the stack takes beside the addresses (render
    # and agent alike, e.g. --tls-cert/--tls-bind: the first render has the TLS bind).
    flags: list[str] = field(default_factory=list)
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    members: dict[str, StackMember] = field(default_factory=dict)

    # --- addresses -------------------------------------------------------------------
    @property
    def lb_ip(self) -> str:
        return A.lb_ip(self.net)

    def member_ip(self, index: int) -> str:
        try:
            return A.member_ip(self.net, index)
        except LbsyncError as e:
            raise StackError(str(e)) from None

    @property
    def frontend(self) -> str:
        return f"http://{self.lb_ip}:{HTTP_PORT}"

    @property
    def runtime_tcp(self) -> str:
        return f"{self.lb_ip}:{A.RUNTIME_PORT}"

    @property
    def paths(self) -> dict[str, Path]:
        w = self.workdir
        return {"registry": w / "nodes", "config": w / "haproxy.cfg", "admin": w / "admin.sock",
                "master": w / "master.sock", "logs": w / "logs"}

    def settings_values(self) -> dict[str, str | None]:
        """This stack's settings by name (None: the table's default)."""
        p = self.paths
        return {
            "registry_dir": str(p["registry"]), "haproxy_config": str(p["config"]),
            "runtime_socket": str(p["admin"]), "runtime_tcp": self.runtime_tcp,
            "master_socket": str(p["master"]), "frontend_bind": f"{self.lb_ip}:{HTTP_PORT}",
            "stats_bind": f"{self.lb_ip}:{A.STATS_PORT}", "haproxy_bin": self.haproxy_bin,
            "serf_rpc": None if self.handler_mode else f"{self.lb_ip}:{SERF_RPC_PORT}",
        }

    def settings_flags(self) -> list[str]:
        """The flags every lbsync command of this stack shares."""
        return flags("agent", **self.settings_values()) + self.flags

    # --- processes -------------------------------------------------------------------
    def spawn(self, key: str, argv: list[str], env: dict[str, str] | None = None,
              ) -> subprocess.Popen[bytes]:
        """Start a process of the stack in its own group, output in logs/KEY.log; stop()
        stops it."""
        return self._track(key, lambda log: subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, env=env))

    def serve_http(self, key: str, listens: list[tuple[str, str]]) -> subprocess.Popen[bytes]:
        """One light HTTP member process answering for each (NAME, IP) (many members need
        not be many Python processes)."""
        return self.spawn(key, http_member_argv(listens), env=checkout_env())

    def _track(self, key: str, start: Callable[[IO[bytes]], subprocess.Popen[bytes]],
               ) -> subprocess.Popen[bytes]:
        """Start a process with its output in logs/KEY.log, and remember it for stop()."""
        self.paths["logs"].mkdir(parents=True, exist_ok=True)
        with open(self.paths["logs"] / f"{key}.log", "ab") as log:  # the child keeps its copy
            proc = start(log)
        self.procs[key] = proc
        return proc

    def lbsync(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run one lbsync command to completion with this stack's flags."""
        return subprocess.run([sys.executable, "-m", "lbsync", *args], capture_output=True,
                              text=True, timeout=60, check=False)

    def start(self) -> None:
        """HAProxy, the load balancer's Serf agent and lbsync agent."""
        for b in (self.haproxy_bin, "serf"):
            need(b)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.paths["registry"].mkdir(exist_ok=True)
        r = self.lbsync("render", *self.settings_flags())
        if r.returncode != 0:
            raise StackError(f"lbsync render failed: {r.stderr.strip()}")
        self.start_haproxy()
        self.start_lb_serf()
        self.start_agent()

    def start_haproxy(self) -> None:
        self.paths["master"].unlink(missing_ok=True)
        self._track("haproxy", lambda log: start_master(
            self.paths["config"], self.paths["master"], binary=self.haproxy_bin, output=log))
        wait_ready(self.runtime(), timeout=10)

    def start_lb_serf(self) -> None:
        handler = None
        if self.handler_mode:
            handler = shlex.join([sys.executable, "-m", "lbsync", "handle",
                                  *flags("handle", registry_dir=self.paths["registry"])])
        # As wherever lbsync starts Serf: a restarted agent rejoins what it knew.
        argv = serf_agent_argv(
            "lb", f"{self.lb_ip}:{SERF_PORT}", f"{self.lb_ip}:{SERF_RPC_PORT}",
            profile=self.serf_profile, tags={"role": "lb"},
            snapshot=self.workdir / "serf-lb.snapshot", rejoin=True, event_handler=handler)
        self.spawn("serf-lb", argv)
        wait_for(lambda: self.rpc_ok(self.lb_ip), 10, "the load balancer's Serf agent")

    def start_agent(self) -> None:
        self.spawn("agent", [sys.executable, "-m", "lbsync", "agent", *self.settings_flags(),
                              *self.agent_args])

    def rpc_ok(self, ip: str) -> bool:
        """Whether the Serf agent at IP answers `serf members` on its RPC port."""
        r = subprocess.run(["serf", "members", "-rpc-addr", f"{ip}:{SERF_RPC_PORT}"],
                           capture_output=True, timeout=5, check=False)
        return r.returncode == 0

    def add_member(self, index: int, *, tags: dict[str, str] | None = None,
                   name: str | None = None, http: bool = True, join: bool = True,
                   ) -> StackMember:
        """A member's Serf agent (and its HTTP member unless `http=False`). It joins the
        load balancer's agent, retrying every second, unless `join=False`: then it starts
        alone, and the caller asks it to join (bench/joinstorm.py)."""
        ip = self.member_ip(index)
        m = StackMember(name or f"node{index}", ip)
        if http:
            m.http = self.serve_http(f"http-{m.name}", [(m.name, ip)])
        argv = serf_agent_argv(
            m.name, f"{ip}:{SERF_PORT}", f"{ip}:{SERF_RPC_PORT}", profile=self.serf_profile,
            tags={"role": "edge", "port": str(HTTP_PORT), **(tags or {})},
            retry_join=f"{self.lb_ip}:{SERF_PORT}" if join else (),
            retry_interval="1s" if join else None)
        # GOMAXPROCS=1 as in the node image and the local cluster (s6/node/serf/run).
        argv = [*self.member_wrapper, *argv]
        m.serf = self.spawn(f"serf-{m.name}", argv, env={**os.environ, "GOMAXPROCS": "1"})
        self.members[m.name] = m
        return m

    def leave_member(self, name: str, *, stop_http: bool = False) -> None:
        """Graceful: `serf leave` (the agent then exits)."""
        m = self.members[name]
        subprocess.run(["serf", "leave", "-rpc-addr", f"{m.ip}:{SERF_RPC_PORT}"],
                       capture_output=True, timeout=30, check=False)
        if m.serf:
            reap(m.serf, 10)
        if stop_http and m.http:
            reap(m.http, 5)

    def kill_member(self, name: str) -> None:
        """A crash: SIGKILL the member's Serf agent and its HTTP member."""
        m = self.members[name]
        for p in (m.serf, m.http):
            if p:
                kill(p)

    def terminate(self, key: str, timeout: float = 5) -> None:
        """SIGTERM one process (group) of the stack, SIGKILL it after `timeout` s."""
        reap(self.procs[key], timeout)

    def kill(self, key: str) -> None:
        kill(self.procs[key])

    def restart_agent(self) -> None:
        reap(self.procs["agent"], 10)
        self.start_agent()

    def restart_haproxy(self) -> None:
        """Stop HAProxy entirely and start it again from the file lbsync keeps."""
        reap(self.procs["haproxy"], 10)
        self.start_haproxy()

    def stop(self) -> None:
        # Members first, all at once, so the agent is not asked to drain what no longer
        # exists; then the load balancer's processes.
        core = ("agent", "haproxy", "serf-lb")
        reap_all([p for k, p in self.procs.items() if k not in core], 10)
        for key in core:
            if key in self.procs:
                reap(self.procs[key], 5)

    # --- what it looks like ----------------------------------------------------------
    def runtime(self) -> RuntimeAPI:
        return RuntimeAPI(str(self.paths["admin"]))

    def master(self) -> MasterCLI:
        return MasterCLI(str(self.paths["master"]))

    def servers(self) -> dict[str, ServerState]:
        return {s.name: s for s in self.runtime().servers_state("nodes")}

    def up_servers(self) -> set[str]:
        return {n for n, s in self.servers().items() if s.up}

    def log(self, key: str) -> str:
        try:
            return (self.paths["logs"] / f"{key}.log").read_text(errors="replace")
        except FileNotFoundError:
            return ""
