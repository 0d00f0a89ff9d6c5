"""Part 8 of bench/run.py: do runtime-added servers cost the data path anything?

The same members, once as servers lbsync added through the Runtime API, once as servers
written in haproxy.cfg, measured with wrk unpaced (as fast as the machine goes), with
keep-alive and with a new connection per request.

Both kinds are served *at the same time*, by two HAProxy processes of the same binary:
the stack's own, started from a file without servers, to which lbsync adds them; and a
twin started from the file lbsync renders with every server in it (its own ports and
sockets). Two wrk, one per HAProxy, run at once. The shared machine's speed drifts by
10-30 % between runs minutes apart (the rounds of the sequential design this replaces
differed that much, far more than the 3 % the guard asks), but within one window it falls
on both kinds alike. Each round gives its own config/runtime throughput ratio; the guard
is the median of those ratios: within 3 %. Even at once the two processes do not share the
CPU evenly over a few seconds (one round's ratio strays by 6-8 % (sd) here), so the full
run takes many short rounds (30 of 3 s): the median of 30 is known to about 1.4 %.
lbsync is stopped during the load (it adds the servers, then stops), so only the servers
differ.
"""

from __future__ import annotations

import re
import shutil
import statistics
import subprocess
import threading
import time
from pathlib import Path

from lbsync.cluster import addresses as A
from lbsync.haproxy.runtime import RuntimeAPI
from lbsync.settings import flags
from tests.rig.devstack import DevStack
from tests.rig.haproxy import master_argv, wait_ready
from tests.rig.procs import wait_for

MEMBERS = 4
GUARD = 0.03
_UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def _ms(text: str) -> float:
    m = re.fullmatch(r"([0-9.]+)(us|ms|s)", text)
    if m is None:
        raise ValueError(f"wrk latency {text!r}")
    return float(m[1]) * _UNIT_MS[m[2]]


def parse_wrk(out: str) -> dict[str, float]:
    """Requests/s, p50 and p99 (ms) and errors from `wrk --latency`'s text."""
    rate = re.search(r"Requests/sec:\s+([0-9.]+)", out)
    p50 = re.search(r"^\s+50%\s+(\S+)", out, re.M)
    p99 = re.search(r"^\s+99%\s+(\S+)", out, re.M)
    if rate is None or p50 is None or p99 is None:
        raise ValueError(f"unexpected wrk output:\n{out}")
    errors = sum(int(x) for x in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"req_s": float(rate[1]), "p50_ms": _ms(p50[1]), "p99_ms": _ms(p99[1]),
            "errors": errors + (int(non2xx[1]) if non2xx else 0)}


def wrk(url: str, seconds: int, keepalive: bool, *, threads: int = 2,
        connections: int = 32) -> dict[str, float]:
    argv = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency", url]
    if not keepalive:
        argv[1:1] = ["-H", "Connection: close"]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30, check=True)
    return parse_wrk(r.stdout)


def _servers_in_file(config: Path) -> int:
    return config.read_text().count("\n    server node")


# The twin HAProxy's ports, beside the stack's own on the load balancer's address.
TWIN_HTTP_PORT, TWIN_STATS_PORT, TWIN_RUNTIME_PORT = (
    A.HTTP_PORT + 1, A.STATS_PORT + 1, A.RUNTIME_PORT - 1)


def _twin_values(stack: DevStack) -> dict[str, str | None]:
    """The stack's settings with the twin's own config, sockets and ports."""
    w, ip = stack.workdir, stack.lb_ip
    return {**stack.settings_values(),
            "haproxy_config": str(w / "twin.cfg"), "runtime_socket": str(w / "twin-admin.sock"),
            "master_socket": str(w / "twin-master.sock"),
            "runtime_tcp": f"{ip}:{TWIN_RUNTIME_PORT}", "frontend_bind": f"{ip}:{TWIN_HTTP_PORT}",
            "stats_bind": f"{ip}:{TWIN_STATS_PORT}"}


def _start_twin(stack: DevStack) -> RuntimeAPI:
    """A second HAProxy started from the file lbsync renders with every server in it."""
    values = _twin_values(stack)
    r = stack.lbsync("render", *flags("agent", **values), *stack.flags)
    if r.returncode != 0:
        raise RuntimeError(f"lbsync render (twin) failed: {r.stderr.strip()}")
    config = Path(str(values["haproxy_config"]))
    if (listed := _servers_in_file(config)) != MEMBERS:
        raise RuntimeError(f"the twin's haproxy.cfg lists {listed} servers")
    stack.spawn("haproxy-twin", master_argv(config, str(values["master_socket"]),
                                            binary=stack.haproxy_bin))
    runtime = RuntimeAPI(str(values["runtime_socket"]))
    wait_ready(runtime, timeout=10)
    return runtime


def _as_runtime_servers(stack: DevStack) -> int:
    """The stack's HAProxy restarted from a file without servers; lbsync adds them at
    runtime. The number of servers in the file HAProxy started from."""
    stack.kill("agent")
    registry = stack.paths["registry"]
    aside = registry.with_name("nodes-aside")
    shutil.move(registry, aside)
    registry.mkdir()
    r = stack.lbsync("render", *stack.settings_flags())
    shutil.rmtree(registry)
    shutil.move(aside, registry)
    if r.returncode != 0:
        raise RuntimeError(f"lbsync render failed: {r.stderr.strip()}")
    stack.restart_haproxy()
    started_with = _servers_in_file(stack.paths["config"])
    stack.start_agent()
    return started_with


def _at_once(urls: dict[str, str], seconds: int, keepalive: bool, first: str
             ) -> dict[str, dict[str, float]]:
    """One wrk per URL, all running at once (`first` started first); their figures."""
    out: dict[str, dict[str, float]] = {}
    errors: list[BaseException] = []

    def run(kind: str) -> None:
        try:
            out[kind] = wrk(urls[kind], seconds, keepalive, threads=1, connections=16)
        except BaseException as e:  # noqa: BLE001 (re-raised below, in the caller's thread)
            errors.append(e)

    order = [first, *(k for k in urls if k != first)]
    threads = [threading.Thread(target=run, args=(k,)) for k in order]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return out


def data_path(tmp: Path, net: int, rounds: int, seconds: int) -> dict[str, object]:
    stack = DevStack(tmp / "datapath", net=net)
    names = {f"node{i}" for i in range(1, MEMBERS + 1)}
    try:
        stack.start()
        for i in range(1, MEMBERS + 1):
            stack.add_member(i)
        wait_for(lambda: stack.up_servers() == names, 30, f"{MEMBERS} members UP")
        if (in_cfg := _as_runtime_servers(stack)) != 0:
            raise RuntimeError(f"HAProxy started with {in_cfg} servers in haproxy.cfg")
        wait_for(lambda: stack.up_servers() == names, 30, "runtime-added servers UP")
        twin = _start_twin(stack)
        wait_for(lambda: {s.name for s in twin.servers_state("nodes") if s.up} == names, 30,
                 "the twin's servers UP")
        # Only the two HAProxy processes run during the load: the servers differ, not
        # what else competes for the CPU.
        stack.kill("agent")
        time.sleep(1)
        urls = {"runtime": f"{stack.frontend}/info",
                "config": f"http://{stack.lb_ip}:{TWIN_HTTP_PORT}/info"}
        runs: dict[str, list[dict[str, float]]] = {}
        for k in range(rounds):
            first = "runtime" if k % 2 == 0 else "config"
            for keepalive in (True, False):
                mode = "keepalive" if keepalive else "close"
                for kind, figures in _at_once(urls, seconds, keepalive, first).items():
                    runs.setdefault(f"{kind}_{mode}", []).append(figures)
            print(f"  round {k + 1}/{rounds}: " + ", ".join(
                f"{key} {v[-1]['req_s']:.0f} req/s" for key, v in sorted(runs.items())),
                flush=True)
        med = {key: {m: round(statistics.median(r[m] for r in v), 3) for m in v[0]}
               for key, v in sorted(runs.items())}
        modes = ("keepalive", "close")
        per_round = {mode: [round(c["req_s"] / r["req_s"], 3) for c, r in
                            zip(runs[f"config_{mode}"], runs[f"runtime_{mode}"], strict=True)]
                     for mode in modes}
        ratios = {mode: round(statistics.median(per_round[mode]), 3) for mode in modes}
        # How far one round's ratio strays (the scheduler, not the servers), and so how well
        # the median of them is known: its standard error is about 1.25 sd / sqrt(rounds).
        spread = {mode: round(statistics.stdev(v), 3) if len(v) > 1 else None
                  for mode, v in per_round.items()}
        result: dict[str, object] = {
            "members": MEMBERS, "rounds": rounds, "seconds_per_run": seconds,
            "order": "at once: two HAProxy processes (runtime-added servers, servers in "
                     "haproxy.cfg), one wrk each, started together; who starts first "
                     "alternates by round",
            "wrk": "wrk -t1 -c16 --latency per HAProxy, unpaced; close: "
                   "-H 'Connection: close'",
            "median": med,
            # The guard's figure: the median of each round's own config/runtime ratio.
            "throughput_ratio_config_over_runtime": ratios,
            "ratio_per_round": per_round,
            "ratio_sd_per_round": spread,
            "guard_within": GUARD,
            "guard_ok": all(abs(r - 1) <= GUARD for r in ratios.values()),
            "runs": runs,
        }
        print(f"  config/runtime throughput: keep-alive {ratios['keepalive']}, close "
              f"{ratios['close']} (guard: within {GUARD:.0%}: "
              f"{'ok' if result['guard_ok'] else 'FAILED'})", flush=True)
        return result
    finally:
        stack.stop()
