"""Join and leave latency of lbsync on loopback, with real haproxy and serf processes.

    .venv/bin/python -m bench.join_leave --runs 20 --out bench/results/join_leave.json
    .venv/bin/python -m bench.join_leave --runs 20 --check-downinter 20ms   # faster first check

Join: from starting a member's Serf agent (its HTTP backend already listens) to the first
request through HAProxy answered by that member. Leave: from `serf leave` to HAProxy no
longer choosing the server for new requests (DRAIN, MAINT or deleted in `show servers
state`), and to the server being gone from HAProxy. Two steady members stay in the
backend throughout. Reports p50/p95 per measure (the join also split into the stages of
JoinStages), and HAProxy's reload count (must be 0).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

from bench.common import pct
from lbsync.cluster.addresses import HTTP_PORT, SERF_PORT, SERF_RPC_PORT
from lbsync.serf.agent_cmd import serf_agent_argv
from lbsync.serf.rpc import SerfRPC
from tests.rig.devstack import DevStack
from tests.rig.procs import wait_for


def first_request_by(stack: DevStack, node: str, timeout: float) -> float:
    """Seconds until a fresh request (no cookie) through HAProxy is served by `node`."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        try:
            if requests.get(f"{stack.frontend}/info", timeout=2).headers.get("X-Node") == node:
                return time.monotonic()
        except requests.RequestException:
            pass
        time.sleep(0.005)
    raise TimeoutError(f"{node} never served a request")


class JoinStages:
    """When a joining member reached each stage, in seconds from `t0`: alive in the load
    balancer's Serf (gossip), in lbsync's registry (lbsync noticed), a server in HAProxy
    (the add), UP (HAProxy's check). Polled every 5 ms in a thread."""

    STAGES = ("serf_s", "registry_s", "added_s", "up_s")

    def __init__(self, stack: DevStack, name: str, t0: float) -> None:
        self.stack, self.name, self.t0 = stack, name, t0
        self.reached: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        rpc = SerfRPC(self.stack.lb_ip, SERF_RPC_PORT)
        registry = self.stack.paths["registry"] / f"{self.name}.json"
        try:
            rpc.connect()
            while not self._stop.is_set() and len(self.reached) < len(self.STAGES):
                now = time.monotonic() - self.t0
                todo = [k for k in self.STAGES if k not in self.reached]
                if "serf_s" in todo and any(m.name == self.name and str(m.status) == "alive"
                                            for m in rpc.members()):
                    self.reached["serf_s"] = now
                if "registry_s" in todo and registry.exists():
                    self.reached["registry_s"] = now
                if "added_s" in todo or "up_s" in todo:
                    server = self.stack.servers().get(self.name)
                    if server is not None:
                        self.reached.setdefault("added_s", now)
                        if server.up:
                            self.reached.setdefault("up_s", now)
                time.sleep(0.005)
        finally:
            rpc.close()

    def stop(self) -> dict[str, float]:
        self._thread.join(timeout=5)
        self._stop.set()
        self._thread.join(timeout=5)
        return dict(self.reached)


def one_run(stack: DevStack, index: int) -> dict[str, float]:
    name = f"churn{index}"
    ip = stack.member_ip(index)
    stack.serve_http(f"http-{name}", [(name, ip)])
    wait_for(lambda: requests.get(f"http://{ip}:{HTTP_PORT}/info", timeout=1).ok, 10,
             f"{name}'s backend")
    t0 = time.monotonic()
    stages = JoinStages(stack, name, t0)
    stack.spawn(f"serf-{name}", serf_agent_argv(
        name, f"{ip}:{SERF_PORT}", f"{ip}:{SERF_RPC_PORT}", profile="local",
        join=f"{stack.lb_ip}:{SERF_PORT}", tags={"role": "edge", "port": str(HTTP_PORT)}))
    join = first_request_by(stack, name, 20) - t0
    reached = stages.stop()

    t1 = time.monotonic()
    leave_cmd = subprocess.Popen(["serf", "leave", "-rpc-addr", f"{ip}:{SERF_RPC_PORT}"],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(
        lambda: (s := stack.servers().get(name)) is None or s.state_word in ("DRAIN", "MAINT"),
        20, f"{name} out of rotation", interval=0.005)
    out_of_rotation = time.monotonic()
    wait_for(lambda: name not in stack.servers(), 20, f"{name} removed", interval=0.005)
    removed = time.monotonic()
    leave_cmd.wait(30)
    stack.kill(f"http-{name}")
    stack.kill(f"serf-{name}")
    return {"join_s": join, **{f"join_{k}": v for k, v in reached.items()},
            "leave_out_of_rotation_s": out_of_rotation - t1, "leave_removed_s": removed - t1}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--net", type=int, default=90, help="use 127.NET.0.x addresses")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--check-downinter", default=None,
                   help="the agent's --check-downinter (default: lbsync's)")
    args = p.parse_args()
    if not 1 <= args.runs <= 200:
        p.error("--runs must be 1-200")
    extra = [] if args.check_downinter is None else ["--check-downinter", args.check_downinter]

    runs: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory(prefix="lbsync-bench-") as tmp:
        stack = DevStack(Path(tmp), net=args.net, flags=extra)
        try:
            stack.start()
            stack.add_member(1)
            stack.add_member(2)
            wait_for(lambda: stack.up_servers() == {"node1", "node2"}, 20, "steady members")
            for i in range(args.runs):
                runs.append(one_run(stack, 10 + i))
                r = runs[-1]
                print(f"run {i + 1:3d}: join {r['join_s']:.3f}s  "
                      f"out of rotation {r['leave_out_of_rotation_s']:.3f}s  "
                      f"removed {r['leave_removed_s']:.3f}s", flush=True)
            reloads = stack.master().status().reloads
        finally:
            stack.stop()

    summary = {}
    stages = [f"join_{k}" for k in JoinStages.STAGES]
    for key in ("join_s", *stages, "leave_out_of_rotation_s", "leave_removed_s"):
        values = [r[key] for r in runs if key in r]
        if not values:
            continue
        summary[key] = {"p50": statistics.median(values), "p95": pct(values, 95),
                        "min": min(values), "max": max(values)}
    result = {
        "command": "python -m bench.join_leave " + " ".join(sys.argv[1:]),
        "machine": {"platform": platform.platform(), "cpus": __import__("os").cpu_count(),
                    "haproxy": subprocess.run(["haproxy", "-v"], capture_output=True,
                                              text=True).stdout.splitlines()[0],
                    "python": platform.python_version()},
        "check_downinter": args.check_downinter or "default",
        "runs": len(runs), "reloads": reloads, "summary": summary, "samples": runs,
    }
    print(f"\n{'measure':28s} {'p50':>8s} {'p95':>8s}  (runs={len(runs)}, reloads={reloads})")
    for key, s in summary.items():
        print(f"{key:28s} {s['p50']:8.3f} {s['p95']:8.3f}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
