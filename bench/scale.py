"""Part 5 of bench/run.py: a join storm of N members (one Serf agent each, one backend
process for all of them), the time to apply an N-server plan, and the agent's footprint."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from bench.common import Sampler, cpu_seconds, proc_usage
from lbsync.cluster.addresses import SERF_PORT, SERF_RPC_PORT
from lbsync.serf.rpc import SerfRPC
from tests.rig.devstack import DevStack, checkout_env
from tests.rig.procs import StackError, wait_for

REST_S = 4.0
STORM_LIMIT_S = 120.0  # a storm not all UP by then is reported as such
# The members' Serf agents stand in for other hosts: the load balancer's processes
# (HAProxy, its Serf agent, lbsync, the members' one HTTP backend) must get the CPU
# first, as on a host of their own. Each member runs under Linux's SCHED_IDLE policy, and,
# where the machine lets us (root, the cgroup cpu controller), all of them share one
# cgroup of the lowest weight. SCHED_IDLE alone is not enough past ~300 members: each idle
# task still weighs 3 against a normal task's 1024, so 500 of them outweigh HAProxy or
# lbsync. In one cgroup of weight 2 they weigh 2 together. With SCHED_IDLE alone, 400
# members were not all UP within 120 s (lbsync waited up to 17 s for one Runtime API
# batch and HAProxy's checks timed out) and in the cgroup all UP in 2.8 s (2026-12-06).
MEMBERS_WRAPPER = ["chrt", "--idle", "0"]
MEMBERS_CGROUP_WEIGHT = 2  # cgroup v1 cpu.shares; on cgroup v2, cpu.weight 1 (its lowest)
_CGROUP_V1 = Path("/sys/fs/cgroup/cpu")
_CGROUP_V2 = Path("/sys/fs/cgroup")


@contextlib.contextmanager
def members_cgroup(name: str) -> Iterator[tuple[list[str], str]]:
    """The wrapper that runs a member in one low-weight cgroup (and SCHED_IDLE), and how
    it says so; SCHED_IDLE alone where no cgroup can be made. The cgroup is removed after."""
    group = _make_cgroup(name)
    if group is None:
        yield MEMBERS_WRAPPER, shlex.join(MEMBERS_WRAPPER)
        return
    procs = group / "cgroup.procs"
    wrapper = ["sh", "-c", f'echo $$ > {shlex.quote(str(procs))} && exec "$@"', "sh",
               *MEMBERS_WRAPPER]
    try:
        yield wrapper, f"{shlex.join(MEMBERS_WRAPPER)} in cgroup {group} of weight " \
                       f"{MEMBERS_CGROUP_WEIGHT}"
    finally:
        for _ in range(50):  # the members are stopped by now; their exit can lag
            try:
                group.rmdir()
                break
            except OSError:
                time.sleep(0.1)


def _make_cgroup(name: str) -> Path | None:
    """A cgroup of the lowest CPU weight (v1 or v2), or None where none can be made."""
    if os.geteuid() != 0:
        return None
    v2_controllers = _CGROUP_V2 / "cgroup.subtree_control"
    if (_CGROUP_V1 / "cpu.shares").exists():
        group, knob, value = _CGROUP_V1 / name, "cpu.shares", MEMBERS_CGROUP_WEIGHT
    elif v2_controllers.exists() and "cpu" in v2_controllers.read_text().split():
        group, knob, value = _CGROUP_V2 / name, "cpu.weight", 1
    else:
        return None
    try:
        group.mkdir(exist_ok=True)
        (group / knob).write_text(str(value))
    except OSError:
        return None
    return group


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


def stages(stack: DevStack) -> Callable[[], dict[str, object]]:
    """One probe of where the storm's members are: alive in the load balancer's Serf,
    in lbsync's registry, servers in HAProxy, servers UP; and how long the load
    balancer's Serf took to answer `members` (it slows under a storm, and lbsync's poll
    waits for the same answer)."""
    rpc = SerfRPC(stack.lb_ip, SERF_RPC_PORT, timeout=30)
    registry = stack.paths["registry"]

    def probe() -> dict[str, object]:
        if rpc.closed:
            rpc.connect()
        t0 = time.monotonic()
        listed = rpc.members()
        rpc_ms = (time.monotonic() - t0) * 1000
        alive = sum(1 for m in listed if m.tags.get("role") == "edge"
                    and str(m.status) == "alive")
        servers = stack.servers()
        members = sum(1 for _ in registry.glob("node*.json"))  # lb.json is the lb's own
        return {"serf_alive": alive, "registry": members,
                "haproxy": len(servers), "up": sum(1 for s in servers.values() if s.up),
                "members_rpc_ms": round(rpc_ms, 1)}

    return probe


def _start_members(stack: DevStack, n: int) -> list[subprocess.Popen[bytes]]:
    """N Serf agents that do not join yet; returns their processes."""
    return [p for i in range(1, n + 1)
            if (p := stack.add_member(i, http=False, join=False).serf) is not None]


def _trigger(stack: DevStack, n: int) -> subprocess.Popen[str]:
    """bench.joinstorm, connected to every member's agent and waiting for the word."""
    argv = [sys.executable, "-m", "bench.joinstorm", f"{stack.lb_ip}:{SERF_PORT}",
            *(f"{stack.member_ip(i)}:{SERF_RPC_PORT}" for i in range(1, n + 1))]
    child = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                             env=checkout_env())
    assert child.stdout is not None
    line = child.stdout.readline().strip()
    if line != f"ready {n}":
        child.kill()
        raise StackError(f"bench.joinstorm did not connect to the {n} agents: {line!r}")
    return child


def storm(tmp: Path, n: int, net: int, profile: str = "lan",
          wrapper: list[str] | None = None) -> dict[str, object]:
    """N members' Serf agents start alone; at one instant all are asked to join the load
    balancer's agent (bench.joinstorm), and the clock runs from there to all N UP."""
    # Serf's `lan` profile by default, as the images run it (s6/*/serf/run); `local` is
    # what the failure benchmarks use, and costs four times the CPU in a storm.
    with contextlib.ExitStack() as cleanup:
        if wrapper is None:
            wrapper, run_under = cleanup.enter_context(members_cgroup(f"lbsync-bench-{n}"))
        else:
            run_under = shlex.join(wrapper)
        return _storm(tmp, n, net, profile, wrapper, run_under)


def _storm(tmp: Path, n: int, net: int, profile: str, wrapper: list[str],
           run_under: str) -> dict[str, object]:
    stack = DevStack(tmp / f"scale{n}", net=net, serf_profile=profile, member_wrapper=wrapper)
    trigger: subprocess.Popen[str] | None = None
    try:
        stack.start()
        stack.serve_http("http-all", [(f"node{i}", stack.member_ip(i)) for i in range(1, n + 1)])
        t_spawn = time.time()
        members = _start_members(stack, n)
        trigger = _trigger(stack, n)
        started_s = time.time() - t_spawn
        time.sleep(REST_S)  # the agents and lbsync settle before "at rest"
        agent, lb_serf = stack.procs["agent"], stack.procs["serf-lb"]
        with Sampler(proc_usage(agent.pid), interval=0.5) as usage, \
                Sampler(proc_usage(lb_serf.pid), interval=0.5) as serf_usage, \
                Sampler(stages(stack), interval=0.1) as where:
            time.sleep(REST_S)
            cpu_before = cpu_seconds(members)
            assert trigger.stdin is not None and trigger.stdout is not None
            t_storm = time.time()
            trigger.stdin.write("go\n")
            trigger.stdin.flush()
            try:
                wait_for(lambda: len(stack.up_servers()) == n, STORM_LIMIT_S, f"{n} servers UP",
                         interval=0.1)
                all_up = True
            except StackError:
                all_up = False  # reported, not raised: the sizes after it still run
            t_up = time.time()
            members_cpu = cpu_seconds(members) - cpu_before
            time.sleep(REST_S)
            t_end = time.time()
        trigger.stdin.close()
        try:
            joins = json.loads(trigger.stdout.readline() or "null")
        except ValueError:
            joins = None
        result: dict[str, object] = {
            "members": n, "serf_profile": profile, "members_run_under": run_under,
            "storm_to_all_up_s": round(t_up - t_storm, 3) if all_up else None,
            "all_up_within_limit": all_up, "limit_s": STORM_LIMIT_S,
            # Not in the storm's time: every agent runs, alone, before the joins start.
            "start_all_serf_agents_s": round(started_s, 3),
            # The joins as bench.joinstorm saw them: how many were refused at first
            # (memberlist's 128 push/pulls at once) and asked again 1 s later.
            "joins": joins,
            # When the last member reached each stage (from the joins' instant): gossip
            # (alive in the load balancer's Serf), lbsync noticing (registry), the add
            # (a server in HAProxy) and the first passing check (UP).
            "all_reached_s": {k: _first(where.samples, k, n, t_storm)
                              for k in ("serf_alive", "registry", "haproxy", "up")},
            # Servers UP at the last probe, REST_S after all were: whether they stayed.
            "up_after_rest": next((v["up"] for _, v in reversed(where.samples)
                                   if isinstance(v, dict) and "up" in v), None),
            "agent_idle_0_members": _usage(usage.samples, t_storm - REST_S, t_storm),
            "agent_storm": _usage(usage.samples, t_storm, t_up),
            "agent_idle_n_members": _usage(usage.samples, t_up + 1, t_end),
            "lb_serf_storm": _usage(serf_usage.samples, t_storm, t_up),
            "members_serf_cpu_s_storm": round(members_cpu, 1),
            "lb_serf_members_rpc_ms_storm": _rpc_ms(where.samples, t_storm, t_up),
            "load_avg_after": round(os.getloadavg()[0], 1),
            "stage_timeline": [(round(t - t_storm, 2), v) for t, v in where.samples],
            "agent_usage_timeline": [(round(t - t_storm, 2), v) for t, v in usage.samples],
        }
        result["lb_serf_log_tail"] = stack.log("serf-lb")[-2000:]
        if not all_up:
            print(f"  {n} members: NOT all UP within {STORM_LIMIT_S} s (all reached "
                  f"{result['all_reached_s']}; joins {joins})", flush=True)
            return result
        result["apply_plan"] = apply_plan(stack, n)
        print(f"  {n} members: storm -> all UP {result['storm_to_all_up_s']} s "
              f"(all reached {result['all_reached_s']}; joins {joins}); "
              f"{n}-server plan {result['apply_plan']}", flush=True)
        return result
    finally:
        if trigger is not None and trigger.poll() is None:
            trigger.kill()
            trigger.wait()
        stack.stop()


def _rpc_ms(samples: list[tuple[float, object]], t0: float, t1: float) -> dict[str, float]:
    """The load balancer's Serf answering `members` during the storm: p50 and max, ms."""
    ms = [float(v["members_rpc_ms"]) for t, v in samples
          if t0 <= t <= t1 and isinstance(v, dict) and "members_rpc_ms" in v]
    if not ms:
        return {}
    return {"p50": round(statistics.median(ms), 1), "max": round(max(ms), 1), "samples": len(ms)}


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
    try:
        wait_for(lambda: len(stack.up_servers()) == n, 120, f"{n} servers back UP",
                 interval=0.05)
        all_up: float | None = time.monotonic() - t0
    except StackError:
        # Reported, not raised: at 500 members on 2 vCPU the members' own agents, starved,
        # fail each other's probes after the storm, and lbsync follows Serf's verdicts.
        all_up = None
    with log.open("rb") as f:
        f.seek(offset)
        text = f.read().decode(errors="replace")
    batches = [(float(m[1]), int(m[2])) for m in ADD_LINE.finditer(text)]
    biggest = max(batches, key=lambda b: b[1]) if batches else (None, 0)
    return {"servers": len(names), "runtime_batch_ms": biggest[0], "batch_size": biggest[1],
            "agent_start_to_all_up_s": round(all_up, 3) if all_up is not None else None,
            "up_at_end": len(stack.up_servers()),
            "note": "runtime_batch_ms: one Runtime API session sending every add/enable "
                    "command, from the agent's log; agent_start includes Python start-up"}
