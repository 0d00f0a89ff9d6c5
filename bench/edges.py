"""Crossbar.io members for the benchmark's side-by-side part, and the WAMP load on them.

A member of the side-by-side is a real Crossbar node (one router worker, one proxy worker
serving /info, /mydata and /ws on the member's address), so HTTP (wrk) and WAMP
(bench/wampload.py) go through the same HAProxy backend the product builds. The member's
Serf agent is the devstack's; this module starts and stops only Crossbar.
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import requests

from lbsync.cluster.addresses import HTTP_PORT
from lbsync.edge.crossbar import prepare_cbdir, render_crossbar_config, write_crossbar_config
from tests.rig.devstack import DevStack, checkout_env
from tests.rig.procs import StackError, wait_for


def crossbar_id(index: int) -> str:
    return f"member{index}"


@dataclass
class CrossbarMembers:
    """Crossbar nodes of a devstack, by member index (their processes are the stack's)."""

    stack: DevStack
    crossbar: str = str(Path(sys.executable).parent / "crossbar")

    def key(self, index: int) -> str:
        return f"crossbar-{index}"

    def start(self, index: int, nice: int = 0) -> None:
        """Start member `index`'s Crossbar; `nice` > 0 starts it at a lower CPU priority, so
        a restart during a measurement takes only spare CPU (wait() sets it back to 0)."""
        cbdir = self.stack.workdir / "cb" / str(index)
        prepare_cbdir(cbdir)
        write_crossbar_config(cbdir, render_crossbar_config(
            crossbar_id(index), self.stack.member_ip(index), HTTP_PORT, proxies=1))
        (cbdir / "node.pid").unlink(missing_ok=True)  # a killed node leaves it behind
        argv = [self.crossbar, "start", "--cbdir", str(cbdir), "--loglevel", "warn"]
        proc = self.stack.spawn(self.key(index),
                                ["nice", "-n", str(nice), *argv] if nice else argv)
        if nice:
            _autogroup_nice(proc.pid, nice)

    def serving(self, index: int) -> bool:
        try:
            url = f"http://{self.stack.member_ip(index)}:{HTTP_PORT}/info"
            return requests.get(url, timeout=1).status_code == 200
        except requests.RequestException:
            return False

    def wait(self, indices: list[int], timeout: float = 120) -> float:
        """Until every one serves /info; then back to normal CPU priority.

        A niced node takes only spare CPU, and a busy machine may have none: after a
        quarter of `timeout` the nodes are reniced and the wait goes on at full priority
        (a measurement on a loaded machine is then slower, not a timeout)."""
        def serving() -> bool:
            return all(self.serving(i) for i in indices)

        patient = timeout / 4
        try:
            return wait_for(serving, patient, f"Crossbar on members {indices}", interval=0.2)
        except StackError:
            for i in indices:
                self._renice(i)
            return patient + wait_for(serving, timeout - patient,
                                      f"Crossbar on members {indices}", interval=0.2)
        finally:
            for i in indices:
                self._renice(i)

    def _renice(self, index: int) -> None:
        proc = self.stack.procs[self.key(index)]
        _autogroup_nice(proc.pid, 0)
        with contextlib.suppress(psutil.Error):
            root = psutil.Process(proc.pid)
            for p in [root, *root.children(recursive=True)]:
                with contextlib.suppress(psutil.Error):
                    if p.nice() != 0:
                        p.nice(0)  # lowering a nice value needs root: else it stays

    def stop(self, index: int) -> None:
        """SIGTERM (Crossbar closes its sessions with GOODBYE), SIGKILL after 15 s."""
        if self.key(index) in self.stack.procs:
            self.stack.terminate(self.key(index), timeout=15)


def _autogroup_nice(pid: int, nice: int) -> None:
    """With the kernel's autogroups on, each session (the stack starts every process in its
    own) shares CPU as one group whatever its processes' nice values: set the group's."""
    with contextlib.suppress(OSError):
        Path(f"/proc/{pid}/autogroup").write_text(str(nice))


@dataclass
class WampLoad:
    """bench/wampload.py in its own process (its own GIL) until stop()."""

    url: str
    out: Path
    held: int = 10
    rotating: int = 20
    timeout: float = 5.0  # connect/join/call timeout of each attempt
    sticky: bool = False  # clients send back HAProxy's cookie when they reconnect
    report_progress: bool = False  # keep the counts so far in progress_file (progress())
    cafile: Path | None = None  # wss://: the CA that verifies HAProxy's certificate
    proc: subprocess.Popen[bytes] | None = None
    started: float = 0.0

    def start(self) -> None:
        self.out.unlink(missing_ok=True)
        self.progress_file.unlink(missing_ok=True)
        self.started = time.time()
        with open(self.out.with_suffix(".log"), "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "bench.wampload", "--url", self.url,
                 "--held", str(self.held), "--rotating", str(self.rotating),
                 "--timeout", str(self.timeout), "--out", str(self.out),
                 *(["--sticky"] if self.sticky else []),
                 *(["--cafile", str(self.cafile)] if self.cafile else []),
                 *(["--progress", str(self.progress_file)] if self.report_progress else [])],
                stdout=log, stderr=subprocess.STDOUT, env=checkout_env())

    @property
    def progress_file(self) -> Path:
        return self.out.with_suffix(".progress.json")

    def progress(self) -> dict[str, int]:
        """The counts so far (with report_progress); {} until the first sample."""
        try:
            counts: dict[str, int] = json.loads(self.progress_file.read_text())
        except FileNotFoundError:
            return {}
        return counts

    def kill(self) -> None:
        """Stop at once, results lost: a failed run leaves no load generator behind."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> dict[str, Any]:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.returncode != 0 or not self.out.exists():
            log = self.out.with_suffix(".log").read_text(errors="replace")
            raise RuntimeError(f"bench/wampload.py failed ({self.proc.returncode}): {log[-2000:]}")
        data: dict[str, Any] = json.loads(self.out.read_text())
        return data
