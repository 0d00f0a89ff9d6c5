"""Part 8 of bench/run.py: do runtime-added servers cost the data path anything?

The same members, once as servers lbsync added through the Runtime API, once as servers
written in haproxy.cfg (HAProxy restarted from the file lbsync renders), each measured with
wrk unpaced (as fast as the machine goes), with keep-alive and with a new connection per
request. lbsync is stopped during the load in both kinds (it adds the servers, then
stops), so only the servers differ. The rounds run in ABBA order (runtime then config,
then config then runtime, ...), so a drift of the shared machine's speed falls on both
kinds alike. Each round gives its own config/runtime throughput ratio, measured minutes
apart at most; the guard is the median of those ratios: within 3 %. (The ratio of the
medians is kept too: the machine drifted by more than 3 % between rounds.)
"""

from __future__ import annotations

import re
import shutil
import statistics
import subprocess
import time
from pathlib import Path

from tests.rig.devstack import DevStack
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


def wrk(url: str, seconds: int, keepalive: bool) -> dict[str, float]:
    argv = ["wrk", "-t2", "-c32", f"-d{seconds}s", "--latency", url]
    if not keepalive:
        argv[1:1] = ["-H", "Connection: close"]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30, check=True)
    return parse_wrk(r.stdout)


def _servers_in_file(stack: DevStack) -> int:
    return stack.paths["config"].read_text().count("\n    server node")


def _as_runtime_servers(stack: DevStack) -> int:
    """HAProxy restarted from a file without servers; lbsync adds them at runtime. The
    number of servers in the file HAProxy started from."""
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
    started_with = _servers_in_file(stack)
    stack.start_agent()
    return started_with


def _as_config_servers(stack: DevStack) -> int:
    """HAProxy restarted from a file that lists every server."""
    r = stack.lbsync("render", *stack.settings_flags())
    if r.returncode != 0:
        raise RuntimeError(f"lbsync render failed: {r.stderr.strip()}")
    stack.restart_haproxy()
    return _servers_in_file(stack)


def data_path(tmp: Path, net: int, rounds: int, seconds: int) -> dict[str, object]:
    stack = DevStack(tmp / "datapath", net=net)
    names = {f"node{i}" for i in range(1, MEMBERS + 1)}
    try:
        stack.start()
        for i in range(1, MEMBERS + 1):
            stack.add_member(i)
        wait_for(lambda: stack.up_servers() == names, 30, f"{MEMBERS} members UP")
        url = f"{stack.frontend}/info"
        runs: dict[str, list[dict[str, float]]] = {}
        kinds = [("runtime", _as_runtime_servers), ("config", _as_config_servers)]
        for k in range(rounds):
            for kind, prepare in kinds if k % 2 == 0 else kinds[::-1]:
                in_cfg = prepare(stack)
                if in_cfg != (MEMBERS if kind == "config" else 0):
                    raise RuntimeError(f"{kind} round: HAProxy started with {in_cfg} servers "
                                       "in haproxy.cfg")
                wait_for(lambda: stack.up_servers() == names, 30, f"{kind} servers UP")
                # Only HAProxy runs during the load, in both kinds: the servers differ,
                # not what else competes for the CPU.
                stack.kill("agent")
                time.sleep(1)
                for keepalive in (True, False):
                    key = f"{kind}_{'keepalive' if keepalive else 'close'}"
                    runs.setdefault(key, []).append(wrk(url, seconds, keepalive))
            print(f"  round {k + 1}/{rounds}: " + ", ".join(
                f"{key} {v[-1]['req_s']:.0f} req/s" for key, v in runs.items()), flush=True)
        med = {key: {m: round(statistics.median(r[m] for r in v), 3) for m in v[0]}
               for key, v in runs.items()}
        modes = ("keepalive", "close")
        per_round = {mode: [round(c["req_s"] / r["req_s"], 3) for c, r in
                            zip(runs[f"config_{mode}"], runs[f"runtime_{mode}"], strict=True)]
                     for mode in modes}
        ratios = {mode: round(statistics.median(per_round[mode]), 3) for mode in modes}
        result: dict[str, object] = {
            "members": MEMBERS, "rounds": rounds, "seconds_per_run": seconds,
            "order": "ABBA: runtime, config | config, runtime | ...",
            "wrk": "wrk -t2 -c32 --latency, unpaced; close: -H 'Connection: close'",
            "median": med,
            # The guard's figure: the median of each round's own config/runtime ratio.
            "throughput_ratio_config_over_runtime": ratios,
            "ratio_per_round": per_round,
            "ratio_of_medians": {
                mode: round(med[f"config_{mode}"]["req_s"] / med[f"runtime_{mode}"]["req_s"], 3)
                for mode in modes},
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
