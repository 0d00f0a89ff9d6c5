"""Part 5 of bench/run.py: a join storm of N members (one Serf agent each, one backend
process for all of them), the time to apply an N-server plan, and the agent's footprint."""

from __future__ import annotations

import re
import statistics
import time
from collections.abc import Callable
from pathlib import Path

from bench.common import Sampler, proc_usage
from lbsync.cluster.addresses import SERF_RPC_PORT
from lbsync.serf.rpc import SerfRPC
from tests.rig.devstack import DevStack
from tests.rig.procs import StackError, wait_for

REST_S = 4.0
STORM_LIMIT_S = 120.0  # a storm not all UP by then is reported as such
ADD_LINE = re.compile(r"add server=\S+ .*took=([0-9.]+)ms batch=(\d+)")


def _usage(samples: list[tuple[float, object]], t0: float, t1: float) -> dict[str, float]:
    window = [v for t, v in samples if t0 <= t <= t1 and isinstance(v, dict)]
    if not window:
        return {}
    cpu = [v["cpu_pct"] for v in window]
    rss = [v["rss_mb"] for v in window]
    return {"cpu_pct_mean": round(statistics.mean(cpu), 1), "cpu_pct_max": round(max(cpu), 1),
            "rss_mb_max": round(max(rss), 1), "samples": len(window)}


def _first(samples: list[tuple[float, object]], key: str, n: int, t0: float) -> float | None:
    """Seconds from t0 until the sampled count `key` first reached n."""
    for t, v in samples:
        if isinstance(v, dict) and v.get(key, 0) >= n:
            return round(t - t0, 3)
    return None


def stages(stack: DevStack) -> Callable[[], dict[str, int]]:
    """One probe of where the storm's members are: alive in the load balancer's Serf,
    in lbsync's registry, servers in HAProxy, servers UP."""
    rpc = SerfRPC(stack.lb_ip, SERF_RPC_PORT)
    registry = stack.paths["registry"]

    def probe() -> dict[str, int]:
        if rpc.closed:
            rpc.connect()
        alive = sum(1 for m in rpc.members() if m.tags.get("role") == "edge"
                    and str(m.status) == "alive")
        servers = stack.servers()
        members = sum(1 for _ in registry.glob("node*.json"))  # lb.json is the lb's own
        return {"serf_alive": alive, "registry": members,
                "haproxy": len(servers), "up": sum(1 for s in servers.values() if s.up)}

    return probe


def storm(tmp: Path, n: int, net: int, profile: str = "lan") -> dict[str, object]:
    # Serf's `lan` profile by default, as the images run it (s6/*/serf/run); `local` is
    # what the failure benchmarks use, and costs four times the CPU in a storm.
    stack = DevStack(tmp / f"scale{n}", net=net, serf_profile=profile)
    try:
        stack.start()
        stack.serve_http("http-all", [(f"node{i}", stack.member_ip(i)) for i in range(1, n + 1)])
        time.sleep(REST_S)  # the agent settles (imports, first reconcile) before "at rest"
        agent, lb_serf = stack.procs["agent"], stack.procs["serf-lb"]
        with Sampler(proc_usage(agent.pid), interval=0.5) as usage, \
                Sampler(proc_usage(lb_serf.pid), interval=0.5) as serf_usage, \
                Sampler(stages(stack), interval=0.1) as where:
            time.sleep(REST_S)
            t_storm = time.time()
            for i in range(1, n + 1):
                stack.add_member(i, http=False)
            spawned_s = time.time() - t_storm
            try:
                wait_for(lambda: len(stack.up_servers()) == n, STORM_LIMIT_S, f"{n} servers UP",
                         interval=0.1)
                all_up = True
            except StackError:
                all_up = False  # reported, not raised: the sizes after it still run
            t_up = time.time()
            time.sleep(REST_S)
            t_end = time.time()
        result: dict[str, object] = {
            "members": n, "serf_profile": profile,
            "storm_to_all_up_s": round(t_up - t_storm, 3) if all_up else None,
            "all_up_within_limit": all_up, "limit_s": STORM_LIMIT_S,
            "spawn_all_serf_agents_s": round(spawned_s, 3),
            # When the last member reached each stage (from the first spawn): gossip
            # (alive in the load balancer's Serf), lbsync noticing (registry), the add
            # (a server in HAProxy) and the first passing check (UP).
            "all_reached_s": {k: _first(where.samples, k, n, t_storm)
                              for k in ("serf_alive", "registry", "haproxy", "up")},
            "agent_idle_0_members": _usage(usage.samples, t_storm - REST_S, t_storm),
            "agent_storm": _usage(usage.samples, t_storm, t_up),
            "agent_idle_n_members": _usage(usage.samples, t_up + 1, t_end),
            "lb_serf_storm": _usage(serf_usage.samples, t_storm, t_up),
            "stage_timeline": [(round(t - t_storm, 2), v) for t, v in where.samples],
            "agent_usage_timeline": [(round(t - t_storm, 2), v) for t, v in usage.samples],
        }
        result["lb_serf_log_tail"] = stack.log("serf-lb")[-2000:]
        if not all_up:
            print(f"  {n} members: NOT all UP within {STORM_LIMIT_S} s (all reached "
                  f"{result['all_reached_s']})", flush=True)
            return result
        result["apply_plan"] = apply_plan(stack, n)
        print(f"  {n} members: storm -> all UP {result['storm_to_all_up_s']} s "
              f"(spawned in {spawned_s:.2f} s; all reached {result['all_reached_s']}); "
              f"{n}-server plan {result['apply_plan']}", flush=True)
        return result
    finally:
        stack.stop()


def apply_plan(stack: DevStack, n: int) -> dict[str, object]:
    """Empty HAProxy's backend behind a stopped agent, restart it: its first pass adds N
    servers in one batch. The agent logs the batch's Runtime API time."""
    stack.kill("agent")
    rt = stack.runtime()
    names = list(stack.servers())
    rt.execute([c for s in names for c in (f"set server nodes/{s} state maint",
                                           f"del server nodes/{s}")])
    assert not stack.servers(), "servers left after del server"
    log = stack.paths["logs"] / "agent.log"
    offset = log.stat().st_size
    t0 = time.monotonic()
    stack.start_agent()
    wait_for(lambda: len(stack.up_servers()) == n, 120, f"{n} servers back UP", interval=0.05)
    all_up = time.monotonic() - t0
    with log.open("rb") as f:
        f.seek(offset)
        text = f.read().decode(errors="replace")
    batches = [(float(m[1]), int(m[2])) for m in ADD_LINE.finditer(text)]
    biggest = max(batches, key=lambda b: b[1]) if batches else (None, 0)
    return {"servers": len(names), "runtime_batch_ms": biggest[0], "batch_size": biggest[1],
            "agent_start_to_all_up_s": round(all_up, 3),
            "note": "runtime_batch_ms: one Runtime API session sending every add/enable "
                    "command, from the agent's log; agent_start includes Python start-up"}
