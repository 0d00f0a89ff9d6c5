"""A real Prometheus scrapes lbsync agent's /metrics and HAProxy's own exporter while real
Serf members join and leave (tests.rig.devstack on 127.N.0.x, Prometheus on a free
127.0.0.1 port, 1 s scrapes). What the test asserts, it reads back from Prometheus's HTTP
API, so names, labels and values are checked the way a dashboard or an alert sees them.
It runs once per HAProxy of `haproxy_bin` (2.6, and 3.0 when LBSYNC_HAPROXY30 names one):
the exporter line in the template is the same for both.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from haproxy_fixtures import HAProxyBin

from lbsync.cluster.addresses import METRICS_PORT
from tests.rig.devstack import DevStack
from tests.rig.procs import free_port, reap, wait_for

pytestmark = [
    pytest.mark.integration,
    # haproxy_bin skips a missing haproxy binary
    pytest.mark.skipif(not all(shutil.which(b) for b in ("serf", "prometheus")),
                       reason="needs the serf and prometheus binaries "
                              "(apt-get install -y serf prometheus)"),
]

# 127.165.0.x and up, one net per run: apart from the other integration tests' and the
# benchmarks' nets.
_nets = itertools.count(165)
SCRAPE = "1s"


@dataclass
class Prometheus:
    url: str
    log: Path
    proc: subprocess.Popen[bytes]

    def api(self, path: str, **params: Any) -> Any:
        r = requests.get(f"{self.url}/api/v1/{path}", params=params, timeout=5)
        body = r.json()
        assert body["status"] == "success", body
        return body["data"]

    def vector(self, expr: str) -> list[tuple[dict[str, str], float]]:
        data = self.api("query", query=expr)
        assert data["resultType"] == "vector", data
        return [(s["metric"], float(s["value"][1])) for s in data["result"]]

    def value(self, expr: str) -> float | None:
        """The one sample `expr` has now, or None when it has none."""
        result = self.vector(expr)
        assert len(result) <= 1, f"{expr} has several series: {result}"
        return result[0][1] if result else None

    def history(self, expr: str, start: float) -> list[float]:
        """`expr` from `start` to now, one value a second, with repeats folded."""
        # Evaluated on a 1 s grid from `start`: a grid point past the newest scrape makes
        # sure that scrape is in the answer.
        data = self.api("query_range", query=expr, start=start, end=time.time() + 1, step="1s")
        assert len(data["result"]) == 1, f"{expr}: {data['result']}"
        values = [float(v) for _, v in data["result"][0]["values"]]
        return [v for i, v in enumerate(values) if i == 0 or v != values[i - 1]]

    def log_tail(self) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-30:])
        except OSError:
            return ""


@contextlib.contextmanager
def prometheus(workdir: Path, targets: dict[str, str]) -> Iterator[Prometheus]:
    """`prometheus` on 127.0.0.1:free port scraping each job's target every second."""
    workdir.mkdir(parents=True)
    config = workdir / "prometheus.yml"
    jobs = "".join(f"  - job_name: {job}\n    static_configs:\n      - targets: ['{target}']\n"
                   for job, target in targets.items())
    config.write_text(f"global:\n  scrape_interval: {SCRAPE}\n  scrape_timeout: {SCRAPE}\n"
                      f"  evaluation_interval: {SCRAPE}\nscrape_configs:\n{jobs}")
    port = free_port()
    log = workdir / "prometheus.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            ["prometheus", f"--config.file={config}", f"--storage.tsdb.path={workdir / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{port}"],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, cwd=workdir)
    prom = Prometheus(f"http://127.0.0.1:{port}", log, proc)
    try:
        def ready() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"prometheus exited {proc.returncode}:\n{prom.log_tail()}")
            try:
                return requests.get(f"{prom.url}/-/ready", timeout=1).status_code == 200
            except requests.RequestException:
                return False

        wait_for(ready, 20, "Prometheus ready", interval=0.1)
        yield prom
    finally:
        reap(proc, 10)
        # What went wrong is in these logs; pytest shows them only on failure.
        sys.stderr.write(f"--- prometheus.log ---\n{prom.log_tail()}\n")


def dashboard_metrics() -> set[str]:
    path = Path(__file__).resolve().parents[2] / "dashboards" / "lbsync.json"
    exprs = [t["expr"] for p in json.loads(path.read_text())["panels"] for t in p["targets"]]
    return {n for e in exprs for n in re.findall(r"(?<![$\w])(?:lbsync|haproxy)_[a-z_]+", e)}


@pytest.fixture
def stack(tmp_path: Path, haproxy_bin: HAProxyBin) -> Iterator[DevStack]:
    s = DevStack(tmp_path / "stack", net=next(_nets), haproxy_bin=haproxy_bin.path)
    s.agent_args = ["--metrics-bind", f"{s.lb_ip}:{METRICS_PORT}"]
    try:
        s.start()
        yield s
    finally:
        s.stop()
        for key in ("agent", "haproxy", "serf-lb"):
            sys.stderr.write(f"--- {key}.log ---\n{s.log(key)[-4000:]}\n")


def test_prometheus_scrapes_lbsync_and_haproxy_through_a_join_and_a_leave(
        stack: DevStack, haproxy_bin: HAProxyBin, tmp_path: Path) -> None:
    lbsync_target = f"{stack.lb_ip}:{METRICS_PORT}"
    haproxy_target = f"{stack.lb_ip}:1936"  # the stats listener; /metrics is its exporter
    with prometheus(tmp_path / "prom", {"lbsync": lbsync_target,
                                        "haproxy": haproxy_target}) as prom:
        started = time.time()
        wait_for(lambda: prom.value('up{job="lbsync"}') == 1
                 and prom.value('up{job="haproxy"}') == 1, 15, "both targets scraped", 0.2)
        joins_before = prom.value('lbsync_membership_events_total{type="member-join"}')
        assert joins_before is not None  # the series exists before any member joined

        def servers_up(n: int) -> bool:
            return (prom.value('lbsync_servers{state="UP"}') == n
                    and prom.value('haproxy_backend_active_servers{proxy="nodes"}') == n)

        stack.add_member(1)
        wait_for(lambda: servers_up(1), 20, "1 server UP seen by Prometheus", 0.2)
        stack.add_member(2)
        wait_for(lambda: servers_up(2), 20, "2 servers UP seen by Prometheus", 0.2)
        assert prom.value('haproxy_server_status{proxy="nodes",server="node2",state="UP"}') == 1
        stack.leave_member("node2")
        wait_for(lambda: servers_up(1) and "node2" not in stack.servers()
                 and prom.value('lbsync_membership_events_total{type="member-leave"}') == 1
                 and prom.value('lbsync_runtime_ops_total{op="del",result="ok"}') == 1,
                 20, "node2 drained and deleted, seen by Prometheus", 0.2)
        wait_for(lambda: prom.value("lbsync_drift_members") == 0, 10, "no drift", 0.2)

        # The join and the leave as Prometheus recorded them, one sample a second.
        assert prom.history('lbsync_servers{state="UP"}', started) == [0, 1, 2, 1]
        assert prom.history('haproxy_backend_active_servers{proxy="nodes"}', started) == [
            0, 1, 2, 1]
        joins = prom.value('lbsync_membership_events_total{type="member-join"}')
        assert joins is not None and joins - joins_before >= 2  # node1 and node2
        assert prom.value('lbsync_runtime_ops_total{op="add",result="ok"}') == 2
        # At least 1: Serf's coalesced member-join can arrive on the stream after the poll
        # saw node2 leaving, and lbsync then undoes its maint and sets it again (seen here).
        assert (prom.value('lbsync_runtime_ops_total{op="maint",result="ok"}') or 0) >= 1
        assert prom.value('sum(lbsync_runtime_ops_total{result="error"})') == 0
        assert (prom.value('lbsync_reconcile_passes_total{result="ok"}') or 0) >= 3
        assert (prom.value("lbsync_reconcile_duration_seconds_count") or 0) >= 3
        assert prom.value("lbsync_reloads_total") == 0
        age = prom.value("time() - lbsync_last_good_pass_timestamp_seconds")
        assert age is not None and 0 <= age < 30, age  # the resync makes a pass every 10 s
        assert prom.value('lbsync_serf_members{status="alive"}') == 2  # lb and node1
        assert prom.value('lbsync_serf_members{status="left"}') == 1
        assert prom.value('lbsync_source_up{source="haproxy"}') == 1
        ((build, one),) = prom.vector("lbsync_build_info")
        assert one == 1, build
        assert build["haproxy_version"] == ".".join(map(str, haproxy_bin.version)), build
        assert prom.value('haproxy_server_status{proxy="nodes",server="node1",state="UP"}') == 1
        # dashboards/lbsync.json asks for series that exist.
        for name in dashboard_metrics():
            assert prom.vector(f"count({name})"), f"the dashboard's {name} has no series"

    assert stack.master().status().reloads == 0, "a membership change reloaded HAProxy"
