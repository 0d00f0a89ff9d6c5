"""Part 4 of bench/run.py: the same scale cycles (1 -> 5 -> 1) under the same fixed load,
once with lbsync's runtime-API mode and once with the reload-per-change baseline.

The members are real Crossbar nodes (bench/edges.py). The load is wrk's HTTP requests at
a fixed rate plus autobahn WAMP clients (bench/wampload.py): held sessions, which all land
on node1 (the member that never leaves) and must outlive every cycle, and rotating
sessions, which renew every 2-6 s and so sit on the members when they leave."""

from __future__ import annotations

import statistics
import threading
import time
from pathlib import Path

from bench.baseline import BaselineStack
from bench.common import Prober, Sampler, Wrk, haproxy_usage, proc_usage, summary
from bench.edges import CrossbarMembers, WampLoad, crossbar_id
from lbsync.cluster.addresses import HTTP_PORT
from lbsync.edge.sidecar import LB_GRACE
from tests.rig.devstack import DevStack
from tests.rig.procs import wait_for

HOLD_S = 2.0  # time spent at 5 and at 1 member in each cycle
# The members that join and leave, alternating by cycle: a member's Crossbar stops when it
# leaves and starts again at once, and is serving again by the time its set comes back.
SETS = ((2, 3, 4, 5), (6, 7, 8, 9))
KEPT = 1  # node1 never leaves: its sessions must outlive every cycle
RESTART_NICE = 19


def _servers(stack: DevStack) -> dict[str, int]:
    states = stack.servers()
    return {"up": sum(s.up for s in states.values()), "total": len(states)}


def _leave(stack: DevStack, edges: CrossbarMembers, index: int, name: str,
           out: list[float]) -> None:
    """Scale-down of one member, the same in both modes: `serf leave`, wait until HAProxy
    no longer has the server (lbsync: after its drain; baseline: after the reload), give it
    the sidecar's grace second, then stop the node's Crossbar, as a supervisor would."""
    t0 = time.monotonic()
    stack.leave_member(name)
    wait_for(lambda: name not in stack.servers(), 90, f"{name} out of HAProxy")
    out.append(time.monotonic() - t0)
    time.sleep(LB_GRACE)
    edges.stop(index)


def scale_cycles(stack: DevStack, mode: str, cycles: int, tmp: Path,
                 rate: int, wamp_clients: tuple[int, int]) -> dict[str, object]:
    edges = CrossbarMembers(stack)
    every = [KEPT, *SETS[0], *SETS[1]]
    for i in every:
        edges.start(i)
    crossbar_start_s = edges.wait(every)
    stack.add_member(KEPT, http=False)
    wait_for(lambda: stack.up_servers() == {f"node{KEPT}"}, 90, "node1 UP")
    reloads_before = _reloads(stack)
    events: list[tuple[float, str]] = []
    leave_s: list[float] = []
    wrk = Wrk(stack.frontend + "/mydata", tmp / f"cycles-{mode}.json", rate=rate)
    wamp = WampLoad(f"ws://{stack.lb_ip}:{HTTP_PORT}/ws", tmp / f"wamp-{mode}.json",
                    held=wamp_clients[0], rotating=wamp_clients[1])
    agent = stack.procs.get("agent")
    usage_probe = proc_usage(agent.pid) if agent else (lambda: None)
    config = stack.paths["config"]
    with Sampler(lambda: _servers(stack), interval=0.1) as sampler, \
            Sampler(usage_probe, interval=0.5) as usage, \
            Sampler(lambda: haproxy_usage(config), interval=0.5) as haproxies, \
            Prober(f"{stack.frontend}/mydata") as prober:
        try:
            wamp.start()
            wrk.start()
            time.sleep(HOLD_S)
            for c in range(cycles):
                joining = SETS[c % 2]
                edges.wait(list(joining))
                names = [f"c{c}n{i}" for i in joining]
                events.append((time.time(), "scale 1 -> 5"))
                for i, name in zip(joining, names, strict=True):
                    stack.add_member(i, name=name, http=False)
                wait_for(lambda n=names: set(n) <= stack.up_servers(), 60, "5 UP")
                time.sleep(HOLD_S)
                events.append((time.time(), "scale 5 -> 1"))
                leaving = [threading.Thread(target=_leave, args=(stack, edges, i, n, leave_s))
                           for i, n in zip(joining, names, strict=True)]
                for t in leaving:
                    t.start()
                for t in leaving:
                    t.join()
                wait_for(lambda: set(stack.servers()) == {"node1"}, 60, "back to 1 server")
                for i in joining:  # serving again by the time this set is used again, on spare CPU
                    edges.start(i, nice=RESTART_NICE)
                time.sleep(HOLD_S)
                print(f"  {mode}: cycle {c + 1}/{cycles} done", flush=True)
            load = wrk.stop()
            sessions = wamp.stop()
        except BaseException:
            wrk.kill()
            wamp.kill()
            raise
    reloads = _reloads(stack) - reloads_before
    cpu = [v["cpu_pct"] for _, v in usage.samples if isinstance(v, dict)]
    reload_times = stack.reload_times() if isinstance(stack, BaselineStack) else []
    hap = [v for _, v in haproxies.samples if isinstance(v, dict)]
    kept = crossbar_id(KEPT)
    sessions["drops_on_kept_member"] = sum(d["node"] == kept for d in sessions["drops"])
    sessions["kept_member"] = kept
    print(f"  {mode}: failed {load['failed']}/{load['requests']} at {load['rate_req_s']} req/s,"
          f" p50 {load['latency_ms']['p50']:.2f} ms, p99 {load['latency_ms']['p99']:.2f} ms,"
          f" reloads {reloads}; probe failed {prober.summary()['failed']}; WAMP: "
          f"{sessions['sessions_opened']} sessions, {len(sessions['drops'])} dropped "
          f"({sessions['drops_on_kept_member']} on {kept}), "
          f"{len(sessions['connect_failures'])} connect failures, "
          f"calls failed {sessions['calls']['failed']}/"
          f"{sessions['calls']['ok'] + sessions['calls']['failed']}", flush=True)
    return {"mode": mode, "cycles": cycles, "membership_changes": 2 * cycles * 4,
            "reloads": reloads, "reload_times": reload_times, "load": load,
            "wrk_started": wrk.started, "events": events, "probe": prober.summary(),
            "wamp": sessions, "crossbar_start_s": round(crossbar_start_s, 1),
            "leave_to_out_of_haproxy_s": summary(leave_s),
            "haproxy_processes_max": max((v["n"] for v in hap), default=None),
            "haproxy_processes_at_end": hap[-1]["n"] if hap else None,
            "haproxy_rss_mb_max": max((v["rss_mb"] for v in hap), default=None),
            "haproxy_processes": [(t, v) for t, v in haproxies.samples],
            "lbsync_agent_cpu_pct_mean": round(statistics.mean(cpu), 1) if cpu else None,
            "servers": [(t, v) for t, v in sampler.samples]}


def _reloads(stack: DevStack) -> int:
    if isinstance(stack, BaselineStack):
        return stack.reload_count()
    return stack.master().status().reloads


def side_by_side(tmp: Path, cycles: int, rate: int, nets: tuple[int, int],
                 wamp_clients: tuple[int, int]) -> dict[str, object]:
    out: dict[str, object] = {}
    for mode, cls, net in (("runtime-api", DevStack, nets[0]),
                           ("reload-baseline", BaselineStack, nets[1])):
        stack = cls(tmp / mode, net=net)
        try:
            stack.start()
            out[mode] = scale_cycles(stack, mode, cycles, tmp, rate, wamp_clients)
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
