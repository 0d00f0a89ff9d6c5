"""Parts 1-3 of bench/run.py on one runtime-API devstack: join latency, leave and crash
under load. Light HTTP members (tests.rig.httpmember), so HAProxy + lbsync are measured."""

from __future__ import annotations

import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

from bench.common import Wrk, summary
from bench.join_leave import JoinStages, one_run
from lbsync.cluster.addresses import SERF_RPC_PORT
from tests.rig.devstack import DevStack
from tests.rig.procs import wait_for


def join_latency(stack: DevStack, runs: int) -> dict[str, Any]:
    """bench/join_leave.py's run: member join -> first request served by it."""
    samples = []
    for i in range(runs):
        r = one_run(stack, 100 + i)
        samples.append(r)
        print(f"  join {i + 1}/{runs}: {r['join_s']:.3f} s", flush=True)
    split = {k: summary([r[f"join_{k}"] for r in samples if f"join_{k}" in r])
             for k in JoinStages.STAGES if any(f"join_{k}" in r for r in samples)}
    return {"unit": "s", "join": summary([r["join_s"] for r in samples]),
            # when the member reached each stage (s from its Serf agent's start); the
            # first request it served is "join"
            "join_stages": split,
            "leave_out_of_rotation": summary([r["leave_out_of_rotation_s"] for r in samples]),
            "samples": samples}


def _out_of_rotation(stack: DevStack, name: str) -> bool:
    s = stack.servers().get(name)
    return s is None or s.state_word in ("DRAIN", "MAINT")


def leave_under_load(stack: DevStack, runs: int, tmp: Path, rate: int) -> dict[str, Any]:
    """`serf leave` of a member while wrk sends a fixed rate of GETs through HAProxy."""
    out: list[dict[str, Any]] = []
    for i in range(runs):
        name = f"leaver{i}"
        m = stack.add_member(60 + i, name=name)
        wait_for(lambda n=name: n in stack.up_servers(), 30, f"{name} UP")
        wrk = Wrk(stack.frontend, tmp / f"leave{i}.json", rate=rate)
        wrk.start()
        time.sleep(2)
        t0 = time.monotonic()
        leave = subprocess.Popen(["serf", "leave", "-rpc-addr", f"{m.ip}:{SERF_RPC_PORT}"],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda n=name: _out_of_rotation(stack, n), 30, f"{name} out of rotation",
                 interval=0.005)
        out_s = time.monotonic() - t0
        wait_for(lambda n=name: n not in stack.servers(), 30, f"{name} removed", interval=0.01)
        removed_s = time.monotonic() - t0
        leave.wait(30)
        stack.kill(f"http-{name}")  # the node stops once it is out (as a real scale-down does)
        time.sleep(2)
        load = wrk.stop()
        out.append({"out_of_rotation_s": out_s, "removed_s": removed_s,
                    "failed": load["failed"], "requests": load["requests"],
                    "rate_req_s": load["rate_req_s"]})
        print(f"  leave {i + 1}/{runs}: out of rotation {out_s:.3f} s, removed {removed_s:.3f}"
              f" s, failed {load['failed']}/{load['requests']}", flush=True)
    return {"unit": "s", "runs": out,
            "failed_total": sum(int(r["failed"]) for r in out),
            "requests_total": sum(int(r["requests"]) for r in out),
            "out_of_rotation_s_p50": statistics.median(float(r["out_of_rotation_s"])
                                                       for r in out)}


def crash_under_load(stack: DevStack, runs: int, tmp: Path, rate: int) -> dict[str, Any]:
    """`kill -9` of a member's Serf agent and backend under load."""
    out: list[dict[str, Any]] = []
    cfg = stack.paths["config"]
    for i in range(runs):
        name = f"crash{i}"
        stack.add_member(80 + i, name=name)
        wait_for(lambda n=name: n in stack.up_servers(), 30, f"{name} UP")
        wrk = Wrk(stack.frontend, tmp / f"crash{i}.json", rate=rate)
        wrk.start()
        time.sleep(2)
        t0 = time.monotonic()
        stack.kill_member(name)
        wait_for(lambda n=name: n not in stack.up_servers(), 30, f"{name} DOWN", interval=0.01)
        down_s = time.monotonic() - t0
        wait_for(lambda n=name: f"server {n} " not in cfg.read_text(), 60,
                 f"{name} out of haproxy.cfg", interval=0.02)
        cfg_s = time.monotonic() - t0
        time.sleep(1)
        load = wrk.stop()
        out.append({"down_s": down_s, "removed_from_cfg_s": cfg_s, "failed": load["failed"],
                    "requests": load["requests"], "rate_req_s": load["rate_req_s"]})
        print(f"  crash {i + 1}/{runs}: DOWN {down_s:.2f} s, out of haproxy.cfg {cfg_s:.2f} s,"
              f" failed {load['failed']}/{load['requests']}", flush=True)
    return {"unit": "s", "runs": out,
            "failed_total": sum(int(r["failed"]) for r in out),
            "requests_total": sum(int(r["requests"]) for r in out),
            "down_s_p50": statistics.median(float(r["down_s"]) for r in out),
            "removed_from_cfg_s_p50": statistics.median(float(r["removed_from_cfg_s"])
                                                        for r in out)}
