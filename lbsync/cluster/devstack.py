"""A load balancer and its members as plain processes on loopback addresses.

This is the smallest real system lbsync runs in: HAProxy (master-worker), the load
balancer's Serf agent, `lbsync agent`, and members that are each a Serf agent plus a
light HTTP backend, every one of them on its own 127.N.0.x address. The integration
tests, the benchmark and the README's demo all drive it, so the three see the same thing.

Addresses: the load balancer is 127.N.0.1 (frontend :8080, stats :1936, runtime :9999),
member i is 127.N.0.(10+i) (Serf :7946/:7373, HTTP :8080).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from ..haproxy.binary import start_master
from ..haproxy.master import MasterCLI
from ..haproxy.runtime import RuntimeAPI
from ..model import LbsyncError, ServerState

SERF_PORT = 7946
SERF_RPC_PORT = 7373
HTTP_PORT = 8080


class StackError(LbsyncError):
    """A process of the stack did not start or did not reach the state asked for."""


def need(binary: str) -> str:
    path = shutil.which(binary)
    if path is None:
        raise StackError(f"{binary} not found on PATH (apt-get install -y {binary})")
    return path


@dataclass
class Member:
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
    agent_args: list[str] = field(default_factory=list)
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    members: dict[str, Member] = field(default_factory=dict)

    # --- addresses -------------------------------------------------------------------
    @property
    def lb_ip(self) -> str:
        return f"127.{self.net}.0.1"

    def member_ip(self, index: int) -> str:
        if not 1 <= index <= 240:
            raise StackError(f"member index {index} is outside 1-240")
        return f"127.{self.net}.0.{10 + index}"

    @property
    def frontend(self) -> str:
        return f"http://{self.lb_ip}:{HTTP_PORT}"

    @property
    def runtime_tcp(self) -> str:
        return f"{self.lb_ip}:9999"

    @property
    def paths(self) -> dict[str, Path]:
        w = self.workdir
        return {"registry": w / "nodes", "config": w / "haproxy.cfg", "admin": w / "admin.sock",
                "master": w / "master.sock", "logs": w / "logs"}

    def settings_flags(self) -> list[str]:
        """The flags every lbsync command of this stack shares."""
        p = self.paths
        flags = [
            "--registry-dir", str(p["registry"]), "--haproxy-config", str(p["config"]),
            "--runtime-socket", str(p["admin"]), "--runtime-tcp", self.runtime_tcp,
            "--master-socket", str(p["master"]),
            "--frontend-bind", f"{self.lb_ip}:{HTTP_PORT}",
            "--stats-bind", f"{self.lb_ip}:1936", "--haproxy-bin", self.haproxy_bin,
        ]
        if not self.handler_mode:
            flags += ["--serf-rpc", f"{self.lb_ip}:{SERF_RPC_PORT}"]
        return flags

    # --- processes -------------------------------------------------------------------
    def _spawn(self, key: str, argv: list[str]) -> subprocess.Popen[bytes]:
        return self._track(key, lambda log: subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True))

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
        self.runtime().wait_ready(timeout=10)

    def start_lb_serf(self) -> None:
        argv = ["serf", "agent", "-node", "lb", "-profile", "local", "-log-level", "warn",
                "-bind", f"{self.lb_ip}:{SERF_PORT}", "-rpc-addr", f"{self.lb_ip}:{SERF_RPC_PORT}",
                "-tag", "role=lb",
                # As wherever lbsync starts Serf: a restarted agent rejoins what it knew.
                "-snapshot", str(self.workdir / "serf-lb.snapshot"), "-rejoin"]
        if self.handler_mode:
            handler = (f"{sys.executable} -m lbsync handle "
                       f"--registry-dir {self.paths['registry']}")
            argv += ["-event-handler", handler]
        self._spawn("serf-lb", argv)
        wait_for(lambda: self._rpc_ok(self.lb_ip), 10, "the load balancer's Serf agent")

    def start_agent(self) -> None:
        self._spawn("agent", [sys.executable, "-m", "lbsync", "agent", *self.settings_flags(),
                              *self.agent_args])

    def _rpc_ok(self, ip: str) -> bool:
        r = subprocess.run(["serf", "members", "-rpc-addr", f"{ip}:{SERF_RPC_PORT}"],
                           capture_output=True, timeout=5, check=False)
        return r.returncode == 0

    def add_member(self, index: int, *, tags: dict[str, str] | None = None,
                   name: str | None = None, http: bool = True) -> Member:
        ip = self.member_ip(index)
        m = Member(name or f"node{index}", ip)
        if http:
            m.http = self._spawn(f"http-{m.name}", [
                sys.executable, "-m", "lbsync.cluster.backend",
                "--listen", f"{ip}:{HTTP_PORT}={m.name}"])
        all_tags = {"role": "edge", "port": str(HTTP_PORT), **(tags or {})}
        argv = ["serf", "agent", "-node", m.name, "-profile", "local", "-log-level", "warn",
                "-bind", f"{ip}:{SERF_PORT}", "-rpc-addr", f"{ip}:{SERF_RPC_PORT}",
                "-retry-join", f"{self.lb_ip}:{SERF_PORT}", "-retry-interval", "1s"]
        for k, v in all_tags.items():
            argv += ["-tag", f"{k}={v}"]
        m.serf = self._spawn(f"serf-{m.name}", argv)
        self.members[m.name] = m
        return m

    def leave_member(self, name: str, *, stop_http: bool = False) -> None:
        """Graceful: `serf leave` (the agent then exits)."""
        m = self.members[name]
        subprocess.run(["serf", "leave", "-rpc-addr", f"{m.ip}:{SERF_RPC_PORT}"],
                       capture_output=True, timeout=30, check=False)
        if m.serf:
            _reap(m.serf, 10)
        if stop_http and m.http:
            _reap(m.http, 5)

    def kill_member(self, name: str) -> None:
        """A crash: SIGKILL the member's Serf agent and its backend."""
        m = self.members[name]
        for p in (m.serf, m.http):
            if p and p.poll() is None:
                p.kill()
                p.wait()

    def terminate(self, key: str, timeout: float = 5) -> None:
        """SIGTERM one process (group) of the stack, SIGKILL it after `timeout` s."""
        _reap(self.procs[key], timeout)

    def kill(self, key: str) -> None:
        p = self.procs[key]
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()

    def restart_agent(self) -> None:
        _reap(self.procs["agent"], 10)
        self.start_agent()

    def restart_haproxy(self) -> None:
        """Stop HAProxy entirely and start it again from the file lbsync keeps."""
        _reap(self.procs["haproxy"], 10)
        self.start_haproxy()

    def stop(self) -> None:
        # Members first, so the agent is not asked to drain what no longer exists.
        for key in sorted(self.procs, key=lambda k: (k in ("agent", "haproxy", "serf-lb"), k)):
            _reap(self.procs[key], 5)

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


def _reap(proc: subprocess.Popen[bytes], timeout: float) -> None:
    """SIGTERM the process group, SIGKILL it when it does not go in time."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def wait_for(cond: object, timeout: float, what: str, interval: float = 0.05) -> float:
    """Poll `cond()` until true; returns the seconds it took, or raises StackError."""
    assert callable(cond)
    started = time.monotonic()
    last: Exception | None = None
    while time.monotonic() - started < timeout:
        try:
            if cond():
                return time.monotonic() - started
        except (LbsyncError, OSError) as e:
            last = e
        time.sleep(interval)
    raise StackError(f"timed out after {timeout:g}s waiting for {what}"
                     + (f" (last error: {last})" if last else ""))


@contextlib.contextmanager
def running(workdir: Path, **kw: object) -> Iterator[DevStack]:
    stack = DevStack(workdir, **kw)  # type: ignore[arg-type]
    try:
        stack.start()
        yield stack
    finally:
        stack.stop()


def main() -> None:
    p = argparse.ArgumentParser(description="Run a load balancer and N members on loopback.")
    p.add_argument("--nodes", type=int, default=3)
    p.add_argument("--dir", type=Path, default=Path("run/devstack"))
    args = p.parse_args()
    if not 0 <= args.nodes <= 240:
        p.error("--nodes must be 0-240")
    with running(args.dir.resolve()) as stack:
        for i in range(1, args.nodes + 1):
            stack.add_member(i)
        wait_for(lambda: len(stack.up_servers()) == args.nodes, 30, f"{args.nodes} servers UP")
        print(f"frontend  {stack.frontend}/info\nstats     http://{stack.lb_ip}:1936/\n"
              f"runtime   echo \"show servers state\" | nc {stack.lb_ip} 9999\n"
              f"config    {stack.paths['config']}\nlogs      {stack.paths['logs']}/\n"
              "Ctrl-C stops everything.", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
            while True:
                time.sleep(3600)


if __name__ == "__main__":
    main()
