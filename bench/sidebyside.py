"""Part 4 of bench/run.py: the same scale cycles (1 -> 5 -> 1) under the same fixed load,
once with lbsync's runtime-API mode and once with the reload-per-change baseline."""

from __future__ import annotations

import statistics
import threading
import time
from pathlib import Path

from baseline import BaselineStack
from common import Prober, Sampler, Wrk, proc_usage, serve_many

from lbsync.cluster.devstack import DevStack, wait_for

HOLD_S = 2.0  # time spent at 5 and at 1 member in each cycle


def _servers(stack: DevStack) -> dict[str, int]:
    states = stack.servers()
    return {"up": sum(s.up for s in states.values()), "total": len(states)}


def scale_cycles(stack: DevStack, mode: str, cycles: int, tmp: Path,
                 rate: int) -> dict[str, object]:
    serve_many(stack, "http-all", [(f"node{i}", stack.member_ip(i)) for i in range(1, 6)])
    time.sleep(1)
    stack.add_member(1, http=False)
    wait_for(lambda: stack.up_servers() == {"node1"}, 30, "node1 UP")
    reloads_before = _reloads(stack)
    events: list[tuple[float, str]] = []
    wrk = Wrk(stack.frontend, tmp / f"cycles-{mode}.json", rate=rate)
    agent = stack.procs.get("agent")
    usage_probe = proc_usage(agent.pid) if agent else (lambda: None)
    with Sampler(lambda: _servers(stack), interval=0.1) as sampler, \
            Sampler(usage_probe, interval=0.5) as usage, \
            Prober(f"{stack.frontend}/mydata") as prober:
        wrk.start()
        time.sleep(HOLD_S)
        for c in range(cycles):
            names = [f"c{c}n{i}" for i in range(2, 6)]
            events.append((time.time(), "scale 1 -> 5"))
            for i, name in zip(range(2, 6), names, strict=True):
                stack.add_member(i, name=name, http=False)
            wait_for(lambda n=names: set(n) <= stack.up_servers(), 60, "5 UP")  # type: ignore[misc]
            time.sleep(HOLD_S)
            events.append((time.time(), "scale 5 -> 1"))
            leaving = [threading.Thread(target=stack.leave_member, args=(n,)) for n in names]
            for t in leaving:
                t.start()
            for t in leaving:
                t.join()
            wait_for(lambda: set(stack.servers()) == {"node1"}, 60, "back to 1 server")
            time.sleep(HOLD_S)
            print(f"  {mode}: cycle {c + 1}/{cycles} done", flush=True)
        load = wrk.stop()
    reloads = _reloads(stack) - reloads_before
    cpu = [v["cpu_pct"] for _, v in usage.samples if isinstance(v, dict)]
    reload_times = stack.reload_times() if isinstance(stack, BaselineStack) else []
    print(f"  {mode}: failed {load['failed']}/{load['requests']} at {load['rate_req_s']} req/s,"
          f" p50 {load['latency_ms']['p50']:.2f} ms, p99 {load['latency_ms']['p99']:.2f} ms,"  # type: ignore[index]
          f" reloads {reloads}; probe failed {prober.summary()['failed']}", flush=True)
    return {"mode": mode, "cycles": cycles, "membership_changes": 2 * cycles * 4,
            "reloads": reloads, "reload_times": reload_times, "load": load,
            "wrk_started": wrk.started, "events": events, "probe": prober.summary(),
            "lbsync_agent_cpu_pct_mean": round(statistics.mean(cpu), 1) if cpu else None,
            "servers": [(t, v) for t, v in sampler.samples]}


def _reloads(stack: DevStack) -> int:
    if isinstance(stack, BaselineStack):
        return stack.reload_count()
    return stack.master().reload_count()


def side_by_side(tmp: Path, cycles: int, rate: int, nets: tuple[int, int]) -> dict[str, object]:
    out: dict[str, object] = {}
    for mode, cls, net in (("runtime-api", DevStack, nets[0]),
                           ("reload-baseline", BaselineStack, nets[1])):
        stack = cls(tmp / mode, net=net)
        try:
            stack.start()
            out[mode] = scale_cycles(stack, mode, cycles, tmp, rate)
        finally:
            stack.stop()
    a, b = out["runtime-api"], out["reload-baseline"]
    assert isinstance(a, dict) and isinstance(b, dict)

    def ratio(x: float, y: float) -> float | None:
        return round(x / y, 2) if y else None

    la, lb = a["load"], b["load"]
    out["ratios_baseline_over_runtime"] = {
        "failed": ratio(lb["failed"], la["failed"]),
        "latency_p50": ratio(lb["latency_ms"]["p50"], la["latency_ms"]["p50"]),
        "latency_p99": ratio(lb["latency_ms"]["p99"], la["latency_ms"]["p99"]),
        "reloads": ratio(b["reloads"], a["reloads"]),
        "note": "null when the runtime-API figure is 0 (no finite ratio)",
    }
    return out
