"""Helpers the benchmark scripts share: percentiles, the machine, paced wrk load, samplers."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, Self, TypedDict

import psutil
import requests

BENCH = Path(__file__).resolve().parent


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def summary(values: list[float]) -> dict[str, float]:
    return {"p50": statistics.median(values), "p95": pct(values, 95),
            "min": min(values), "max": max(values), "n": len(values)}


def machine() -> dict[str, object]:
    def first_line(argv: list[str]) -> str:
        r = subprocess.run(argv, capture_output=True, text=True, check=False)
        return (r.stdout or r.stderr).strip().splitlines()[0] if (r.stdout or r.stderr) else "?"

    return {"platform": platform.platform(), "cpus": psutil.cpu_count(),
            "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
            "haproxy": first_line(["haproxy", "-v"]), "serf": first_line(["serf", "version"]),
            "wrk": first_line(["wrk", "-v"]) if shutil.which("wrk") else None,
            "python": platform.python_version(), "load_avg_at_start": os.getloadavg()}


class WrkResult(TypedDict):
    """What one paced wrk run measured (Wrk.stop)."""

    requests: int
    duration_s: float
    rate_req_s: float
    connections: int
    delay_ms: int
    new_connection_per_request: bool
    failed: int
    unanswered: int
    bad_status: int
    wrk_socket_errors: int
    wrk_errors: dict[str, int]
    latency_ms: dict[str, float]
    timeline: list[dict[str, int]]


@dataclass
class Wrk:
    """wrk at a fixed rate (bench/paced.lua) until stop(); per-second timeline included."""

    url: str
    out: Path
    rate: int = 800
    # Many connections, each paced slowly: the rate then depends little on latency
    # (closed loop: rate = connections / (delay + latency)).
    connections: int = 96
    threads: int = 2
    close: bool = True  # a new connection per request
    proc: subprocess.Popen[bytes] | None = None
    started: float = 0.0

    @property
    def delay_ms(self) -> int:
        return max(1, round(self.connections * 1000 / self.rate))

    @property
    def stop_file(self) -> Path:
        return self.out.with_suffix(".stop")

    def start(self) -> None:
        if shutil.which("wrk") is None:
            raise SystemExit("wrk not found (apt-get install -y wrk)")
        env = {**os.environ, "DELAY_MS": str(self.delay_ms), "OUT_FILE": str(self.out),
               "STOP_FILE": str(self.stop_file), "CLOSE": "1" if self.close else "0"}
        self.out.unlink(missing_ok=True)
        self.stop_file.unlink(missing_ok=True)
        self.started = time.time()
        self.proc = subprocess.Popen(
            ["wrk", f"-t{self.threads}", f"-c{self.connections}", "-d3600s", "--timeout", "5s",
             "-s", str(BENCH / "paced.lua"), self.url],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        time.sleep(0.5)

    def kill(self) -> None:
        """Stop at once, results lost: a failed run leaves no load generator behind."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> WrkResult:
        """No new requests, 2 s for those in flight, then SIGINT: wrk calls done(), which
        writes the JSON."""
        assert self.proc is not None
        self.stop_file.touch()
        stopped = time.time()
        time.sleep(2.0)
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(30)
        data: dict[str, object] = json.loads(self.out.read_text())
        errors = data["errors"]
        assert isinstance(errors, dict)
        sent, ok, bad = (data[k] for k in ("sent", "ok", "bad"))
        latency_us = data["latency_us"]
        assert isinstance(sent, dict) and isinstance(ok, dict) and isinstance(bad, dict)
        assert isinstance(latency_us, dict)
        socket_errors = sum(errors[k] for k in ("connect", "read", "write", "timeout"))
        duration = stopped - self.started
        # wrk calls request() once on thread 0 to check the script, without sending it.
        n_sent = sum(sent.values()) - 1
        answered = sum(ok.values()) + sum(bad.values())
        requests = n_sent
        seconds = sorted(int(s) for s in set(sent) | set(ok) | set(bad))
        timeline = [{"t": s, "sent": sent.get(str(s), 0), "ok": ok.get(str(s), 0),
                     "bad_status": bad.get(str(s), 0)} for s in seconds]
        return {
            "requests": requests, "duration_s": round(duration, 2),
            "rate_req_s": round(requests / duration, 1) if duration else 0.0,
            "connections": self.connections, "delay_ms": self.delay_ms,
            "new_connection_per_request": self.close,
            "failed": n_sent - answered + sum(bad.values()),
            "unanswered": n_sent - answered, "bad_status": sum(bad.values()),
            "wrk_socket_errors": socket_errors, "wrk_errors": errors,
            "latency_ms": {k: v / 1000 for k, v in latency_us.items()},
            "timeline": timeline,
        }


class InThread:
    """Runs the subclass's `_run` in a daemon thread for the length of a `with` block;
    `_run` loops until `_stop` is set."""

    _stop: threading.Event
    _thread: threading.Thread | None
    join_timeout = 5.0

    def _run(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(self.join_timeout)


@dataclass
class Sampler(InThread):
    """Calls `probe()` every `interval` seconds in a thread; keeps (time, value) pairs."""

    probe: Callable[[], object]
    interval: float = 0.1
    samples: list[tuple[float, object]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                value = self.probe()
            except Exception:  # noqa: BLE001 (a sample that fails is a gap, not a crash)
                value = None
            self.samples.append((time.time(), value))
            self._stop.wait(self.interval)



def proc_usage(pid: int) -> Callable[[], dict[str, float]]:
    """A probe of one process: RSS (MB) and CPU % since the previous call."""
    p = psutil.Process(pid)
    p.cpu_percent(None)

    def probe() -> dict[str, float]:
        return {"rss_mb": p.memory_info().rss / 2**20, "cpu_pct": p.cpu_percent(None)}

    return probe


class _HasPid(Protocol):
    @property
    def pid(self) -> int: ...


def cpu_seconds(procs: Iterable[_HasPid]) -> float:
    """The CPU seconds (user + system) these processes (Popen or psutil.Process) have used
    so far; gone ones count 0."""
    total = 0.0
    for p in procs:
        try:
            t = psutil.Process(p.pid).cpu_times()
        except psutil.Error:
            continue
        total += t.user + t.system
    return total


def haproxy_processes(config: Path) -> list[psutil.Process]:
    """Every HAProxy process started with this config (old ones may still be finishing
    their connections after a reload)."""
    procs = []
    for p in psutil.process_iter(["name", "cmdline"]):
        with contextlib.suppress(psutil.Error):
            if p.info["name"] == "haproxy" and str(config) in (p.info["cmdline"] or []):
                procs.append(p)
    return procs


def haproxy_usage(config: Path) -> dict[str, float]:
    """How many HAProxy processes run with this config, and their RSS (MB) together."""
    procs = haproxy_processes(config)
    rss = 0
    for p in procs:
        with contextlib.suppress(psutil.Error):
            rss += p.memory_info().rss
    return {"n": len(procs), "rss_mb": round(rss / 2**20, 1)}


@dataclass
class Prober(InThread):
    """The timeline's sampler: one keep-alive client sending a GET every `interval` s
    beside wrk, recording (time, ok, latency). wrk gives the totals; this gives the when."""

    url: str
    interval: float = 0.02
    results: list[tuple[float, bool, float]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def _run(self) -> None:
        session = requests.Session()
        while not self._stop.is_set():
            t = time.time()
            try:
                ok = session.get(self.url, timeout=5).status_code < 400
            except requests.RequestException:
                ok = False
                session = requests.Session()
            self.results.append((t, ok, time.time() - t))
            self._stop.wait(max(0.0, self.interval - (time.time() - t)))

    join_timeout = 10.0

    def summary(self) -> dict[str, object]:
        return {"requests": len(self.results), "failed": sum(not ok for _, ok, _ in self.results),
                "failed_at": [t for t, ok, _ in self.results if not ok],
                "interval_s": self.interval}
