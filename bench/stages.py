"""Part 5b of bench/run.py: what each stage of one reconcile pass costs as the fleet grows.

For each size N, a real HAProxy (master-worker) and lbsync's real Reconciler, in this
process, with a registry of N members (no Serf: this measures lbsync, not gossip). Then,
`repeats` times, one member joins and one pass runs, and it leaves and the passes run until
it is gone. The pass is split where its stages are: reading the registry into the desired
state, the plan, the Runtime API (`show servers state` and the command batch), rendering
haproxy.cfg, `haproxy -c` on the candidate, and the atomic write. The first pass, which
adds all N servers in one batch, is reported on its own.
"""

from __future__ import annotations

import statistics
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from lbsync.cluster.addresses import HTTP_PORT
from lbsync.haproxy.binary import check_haproxy_config, haproxy_version
from lbsync.haproxy.runtime import RuntimeAPI, response_error
from lbsync.model import Member, ServerState
from lbsync.plan import make_plan
from lbsync.reconcile import Effects, Reconciler
from lbsync.registry import Registry
from lbsync.settings import Settings
from tests.rig.devstack import DevStack

T = TypeVar("T")


class Stopwatch:
    """Milliseconds spent per stage, per pass."""

    def __init__(self) -> None:
        self.current: dict[str, float] = defaultdict(float)

    def timed(self, stage: str, fn: Callable[..., T]) -> Callable[..., T]:
        def wrapper(*args: object, **kw: object) -> T:
            started = time.perf_counter()
            try:
                return fn(*args, **kw)
            finally:
                self.current[stage] += (time.perf_counter() - started) * 1000
        return wrapper

    def take(self) -> dict[str, float]:
        done, self.current = dict(self.current), defaultdict(float)
        return done


class TimedRuntime:
    """The Runtime API with its two calls timed."""

    def __init__(self, runtime: RuntimeAPI, watch: Stopwatch) -> None:
        self.servers_state: Callable[[str], list[ServerState]] = watch.timed(
            "runtime_show_servers_ms", runtime.servers_state)
        self.execute: Callable[[list[str]], list[str]] = watch.timed(
            "runtime_batch_ms", runtime.execute)


def member(stack: DevStack, i: int) -> Member:
    return Member(f"node{i}", stack.member_ip(i), {"role": "edge", "port": str(HTTP_PORT)},
                  time=time.time())


def one_size(tmp: Path, n: int, net: int, repeats: int) -> dict[str, object]:
    stack = DevStack(tmp / f"stages{n}", net=net)
    stack.workdir.mkdir(parents=True, exist_ok=True)
    stack.paths["registry"].mkdir(exist_ok=True)
    registry = Registry(stack.paths["registry"])
    r = stack.lbsync("render", *stack.settings_flags())  # no member yet: no server
    if r.returncode != 0:
        raise RuntimeError(f"lbsync render failed: {r.stderr.strip()}")
    try:
        stack.start_haproxy()
        for i in range(1, n + 1):
            registry.put(member(stack, i))
        settings = Settings.build({k: v for k, v in stack.settings_values().items()
                                   if v is not None})
        watch = Stopwatch()
        check = watch.timed("haproxy_check_ms",
                            lambda p: check_haproxy_config(p, settings.haproxy_bin))
        fx = Effects(runtime=TimedRuntime(stack.runtime(), watch), master=stack.master(),
                     haproxy_check=check, response_error=response_error)
        rec = Reconciler(settings, registry, haproxy_version(settings.haproxy_bin), fx)
        pipeline = rec.config.pipeline
        pipeline.render = watch.timed("render_ms", pipeline.render)  # type: ignore[method-assign]
        pipeline.install = watch.timed("install_ms", pipeline.install)  # type: ignore[method-assign]

        def one_pass() -> dict[str, float]:
            # The pure stages, timed on their own with the same inputs the pass will see.
            t0 = time.perf_counter()
            desired = rec.desired()
            t1 = time.perf_counter()
            actual = stack.runtime().servers_state(settings.backend)
            t2 = time.perf_counter()
            make_plan(actual, desired, rec.mem.holds(), rec.servers.timeouts,
                      now=time.monotonic())
            t3 = time.perf_counter()
            watch.take()
            started = time.perf_counter()
            rec.tick()
            total = (time.perf_counter() - started) * 1000
            stages = watch.take()
            stages["write_ms"] = stages.pop("install_ms", 0.0) - stages.get(
                "haproxy_check_ms", 0.0)
            return {"desired_ms": (t1 - t0) * 1000, "plan_ms": (t3 - t2) * 1000, **stages,
                    "pass_ms": total}

        first = one_pass()
        if len(stack.servers()) != n:
            raise RuntimeError(f"the first pass left {len(stack.servers())} of {n} servers")
        joins: list[dict[str, float]] = []
        for k in range(repeats):
            extra = member(stack, n + 1)
            registry.put(extra)
            joins.append(one_pass())
            if extra.name not in stack.servers():
                raise RuntimeError(f"run {k}: {extra.name} was not added")
            registry.delete(extra.name)
            deadline = time.monotonic() + 30
            while extra.name in stack.servers():
                if time.monotonic() > deadline:
                    raise RuntimeError(f"run {k}: {extra.name} was not removed")
                rec.tick()
                time.sleep(0.05)
        keys = sorted({k for j in joins for k in j})
        median = {k: round(statistics.median(j.get(k, 0.0) for j in joins), 2) for k in keys}
        return {"servers": n, "first_pass_all_servers": {k: round(v, 2) for k, v in first.items()},
                "one_join_pass_median": median,
                "repeats": repeats, "reloads": stack.master().status().reloads}
    finally:
        stack.stop()


def stage_costs(tmp: Path, sizes: list[int], net: int, repeats: int) -> list[dict[str, object]]:
    rows = []
    for n in sizes:
        row = one_size(tmp, n, net, repeats)
        j = row["one_join_pass_median"]
        assert isinstance(j, dict)
        print(f"  {n} servers: one join's pass {j['pass_ms']:.1f} ms = desired "
              f"{j['desired_ms']:.1f} + plan {j['plan_ms']:.1f} + runtime "
              f"{j.get('runtime_show_servers_ms', 0) + j.get('runtime_batch_ms', 0):.1f} + "
              f"render {j.get('render_ms', 0):.1f} + haproxy -c {j.get('haproxy_check_ms', 0):.1f}"
              f" + write {j.get('write_ms', 0):.1f}", flush=True)
        rows.append(row)
    return rows
