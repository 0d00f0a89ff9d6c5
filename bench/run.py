"""lbsync's benchmark suite: one entry point for every measure of issue 5.

    lbsync bench --quick --out bench/results/quick.json   # about 5 minutes
    lbsync bench --out bench/results/full.json            # about 30 minutes
(`lbsync bench` runs `python -m bench.run`; `bash scripts/bench.sh ARGS` sets up first.)

Everything runs on loopback with real haproxy, serf and wrk processes (tests.rig.devstack).
In parts 1-3 and 5 the members' HTTP servers are light Python backends, so what is measured
is the load balancer (HAProxy + lbsync), not the application; in part 4 the members are
real Crossbar.io nodes and autobahn WAMP clients hold sessions through HAProxy beside wrk.
  1. join latency: member join -> first request served by it (bench/join_leave.py's run)
  2. graceful leave under load: failed requests, time until out of rotation
  3. crash under load (kill -9 of Serf agent + backend): failed requests, time to DOWN,
     time to removal from haproxy.cfg
  4. side by side, same run: scale cycles 1 -> 5 -> 1 at a fixed rate (wrk) with WAMP
     sessions (bench/wampload.py), lbsync's runtime-API mode vs the reload-per-change
     baseline (bench/baseline_handler.sh)
  5. scale: a join storm of N members -> all UP, when the last member reached each stage
     (alive in Serf, in the registry, in HAProxy, UP), an N-server plan, the agent's and
     the load balancer's Serf agent's RSS/CPU; 5b (bench/stages.py): one reconcile pass at
     50/200/500 servers split into desired, plan, Runtime API, render, haproxy -c, write
  6. one realm across the fleet (bench/realm.py), on the real local cluster (`lbsync up`,
     Crossbar nodes with router links): call and event latency across nodes vs on one
     node, events lost/duplicated and calls failed through scale cycles 3 -> 5 -> 3, how
     soon a new node's clients reach callees on the old nodes, the n² cost of the links
  7. faults between hosts (bench/faults.py, root only): the load balancer and 3 Crossbar
     members in their own network namespaces; partitions, gossip-only and packet loss,
     kill -9 of every process, haproxy.cfg's folder read-only or full, a corrupt registry
     file, each under HTTP load and WAMP sessions (not in --quick: about 7 minutes)
  8. data path (bench/datapath.py, not in --quick): the same members as runtime-added
     servers and as servers in haproxy.cfg, served at once by two HAProxy processes, one
     wrk each, unpaced, with keep-alive and with a new connection per request; guard:
     throughput within 3 %
  9. certificate rotation (bench/rotation.py, not in --quick): K rotations of the TLS
     certificate under WAMP sessions over wss:// and HTTPS load, through lbsync's Runtime
     API vs the file written and HAProxy reloaded (with and without hard-stop-after):
     sessions dropped, reconnects, calls and requests failed, reloads, the new serial's
     time to be served
Writes the JSON to --out, bench/results/latest.md and PNG plots under bench/results/.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from bench.common import BENCH, machine
from lbsync import stop_on_sigterm
from lbsync.cluster.addresses import MAX_MEMBER
from tests.rig.devstack import DevStack
from tests.rig.procs import wait_for

RESULTS = BENCH / "results"


def parse_parts(p: argparse.ArgumentParser, text: str) -> set[int]:
    try:
        parts = {int(x) for x in text.split(",")}
    except ValueError:
        parts = set()
    if not parts or not parts <= set(range(1, 10)):
        p.error(f"--only {text!r}: a comma-separated list of parts 1-9, e.g. 4,5")
    return parts


def preflight(p: argparse.ArgumentParser, parts: set[int]) -> None:
    """Fail in the first second, not after minutes of measuring, when a part is missing."""
    need = ["haproxy", "serf"] + (["wrk"] if parts & {2, 3, 4, 8, 9} else [])
    missing = [b for b in need if shutil.which(b) is None]
    if 7 in parts:
        from bench.netns import usable
        if problem := usable():
            p.error(f"part 7: {problem}")
    for binary, part in (("crossbar", {4, 6, 7, 9}), ("supervisord", {6})):
        if parts & part and not (Path(sys.executable).parent / binary).exists():
            missing.append(f"{binary} (pip install -e '.[edge]')")
    for module, extra in (("matplotlib", "bench"), ("autobahn", "edge")):
        if importlib.util.find_spec(module) is None:
            missing.append(f"{module} (pip install -e '.[{extra}]')")
    if missing:
        p.error(f"missing: {', '.join(missing)}; `bash scripts/setup.sh` installs them all")


def scale_sizes(p: argparse.ArgumentParser, text: str | None, quick: bool) -> list[int]:
    if text is None:
        return [50] if quick else [100, 200, 500]
    try:
        sizes = [int(x) for x in text.split(",")]
    except ValueError:
        p.error(f"--scale-sizes {text!r}: comma-separated member counts, e.g. 200,500")
    if not all(1 <= n <= MAX_MEMBER for n in sizes):
        p.error(f"--scale-sizes {text!r}: each size must be 1-{MAX_MEMBER}")
    return sizes


def main() -> None:
    # SIGTERM (a stopped `lbsync lab collect`, a CI timeout) unwinds like Ctrl-C: every
    # part's `finally` stops its stack, so no HAProxy, Serf or Crossbar is left behind.
    stop_on_sigterm()
    p = argparse.ArgumentParser(prog="lbsync bench", description=__doc__,
                                formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="fewer runs, 50 members; about 5 minutes")
    p.add_argument("--out", type=Path, required=True, help="JSON results")
    p.add_argument("--rate", type=int, default=800,
                   help="wrk's nominal rate (req/s; the measured rate is reported)")
    p.add_argument("--wamp-held", type=int, default=10,
                   help="part 4: WAMP clients holding one session for the whole run")
    p.add_argument("--wamp-rotating", type=int, default=20,
                   help="part 4: WAMP clients renewing their session every 2-6 s")
    p.add_argument("--scale-sizes", help="part 5's storm sizes, e.g. 200,500 "
                   "(default: 100,200,500; --quick: 50)")
    p.add_argument("--only", help="parts to run, e.g. 4,5 (default: 1-9, --quick: 1-6)")
    p.add_argument("--results", type=Path, default=RESULTS,
                   help="folder of latest.md and the plots (default bench/results)")
    # 127.150 is the local-cluster test's, 127.60-79 the agent tests': stay clear of them.
    p.add_argument("--net", type=int, default=200,
                   help="first N of 127.N.0.x (uses N..N+5, and N+10..N+14 in part 6)")
    args = p.parse_args()
    parts = parse_parts(p, args.only or ("1,2,3,4,5,6" if args.quick else "1,2,3,4,5,6,7,8,9"))
    if args.rate < 100:
        p.error(f"--rate {args.rate}: at least 100 req/s")
    if not 1 <= args.net <= 250:
        p.error(f"--net {args.net}: must be 1-250 (the run uses 127.N.0.x to 127.N+5.0.x)")
    if 6 in parts and args.net + 14 > 255:
        p.error(f"--net {args.net}: part 6 uses 127.N+10.0.x to 127.N+14.0.x: at most 241")
    if args.wamp_held < 0 or args.wamp_rotating < 0 or args.wamp_held + args.wamp_rotating == 0:
        p.error("--wamp-held and --wamp-rotating must be >= 0, and not both 0")
    preflight(p, parts)
    q = args.quick
    cfg = {"join_runs": 10 if q else 20, "leave_runs": 1 if q else 5,
           "crash_runs": 1 if q else 5, "cycles": 2 if q else 10,
           "scale_sizes": scale_sizes(p, args.scale_sizes, q), "rate_req_s": args.rate,
           "wamp_held": args.wamp_held, "wamp_rotating": args.wamp_rotating,
           # part 6: calls and events per latency series, scale cycles 3 -> 5 -> 3, joins
           # 3 -> 4, cluster sizes of the n² cost; rates per publisher / caller
           "realm_calls": 300 if q else 1000, "realm_warmup": 30 if q else 100,
           "realm_cycles": 1 if q else 2, "realm_joins": 1 if q else 3,
           "realm_sizes": [2, 3] if q else [2, 4, 8, 16], "realm_rate": 50,
           "realm_call_rate": 20, "realm_hold_s": 3.0 if q else 4.0,
           "realm_idle_s": 3.0 if q else 5.0,
           # part 5b: server counts of the stage-by-stage pass; part 8: wrk rounds
           # --quick stays under 5 minutes (296 s here with 500 in it, 2026-12-06)
           "stage_sizes": [50, 200] if q else [50, 200, 500], "stage_repeats": 3 if q else 7,
           "datapath_rounds": 10 if q else 30, "datapath_seconds": 2 if q else 3}

    from bench.churn import crash_under_load, join_latency, leave_under_load
    from bench.datapath import data_path
    from bench.faults import BY_NAME, faults
    from bench.realm import realm
    from bench.rotation import rotation
    from bench.scale import storm
    from bench.sidebyside import side_by_side
    from bench.stages import stage_costs

    started = time.time()

    def say(header: str) -> None:  # a part's header, with the time it starts at
        print(f"{header} [at {time.time() - started:.0f} s]", flush=True)

    result: dict[str, object] = {
        "command": " ".join([".venv/bin/lbsync", "bench", *sys.argv[1:]]),
        "quick": q, "config": cfg, "machine": machine(),
        "started_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "backends": "parts 1-3 and 5: light Python HTTP servers (tests.rig.httpmember), so "
                    "the load balancer (HAProxy + lbsync) is what is measured; part 4: real "
                    "Crossbar.io nodes (1 router + 1 proxy worker each), so WAMP sessions "
                    "can run through the same backend as the HTTP load",
        "load": "wrk at a fixed rate (bench/paced.lua: connections x 1000 / delay_ms), a new "
                "connection per request; failed = requests sent that got no answer (socket "
                "error, timeout) + non-2xx/3xx answers",
    }
    with tempfile.TemporaryDirectory(prefix="lbsync-bench-") as t:
        tmp = Path(t)
        if parts & {1, 2, 3}:
            stack = DevStack(tmp / "churn", net=args.net)
            try:
                stack.start()
                stack.add_member(1)
                stack.add_member(2)
                wait_for(lambda: stack.up_servers() == {"node1", "node2"}, 30, "steady members")
                reloads0 = stack.master().status().reloads
                if 1 in parts:
                    say("1. join latency")
                    result["join"] = join_latency(stack, cfg["join_runs"])
                if 2 in parts:
                    say("2. graceful leave under load")
                    result["leave_under_load"] = leave_under_load(stack, cfg["leave_runs"], tmp,
                                                                  args.rate)
                if 3 in parts:
                    say("3. crash under load")
                    result["crash_under_load"] = crash_under_load(stack, cfg["crash_runs"], tmp,
                                                                  args.rate)
                result["churn_reloads"] = stack.master().status().reloads - reloads0
            finally:
                stack.stop()
        if 4 in parts:
            say("4. side by side: runtime API vs reload per change")
            result["side_by_side"] = side_by_side(tmp, cfg["cycles"], args.rate,
                                                  (args.net + 1, args.net + 2),
                                                  (args.wamp_held, args.wamp_rotating))
        if 5 in parts:
            say("5. scale")
            result["scale"] = [storm(tmp, n, args.net + 3 + i)
                               for i, n in enumerate(cfg["scale_sizes"])]
            say("5b. one reconcile pass, stage by stage")
            result["stages"] = stage_costs(tmp, cfg["stage_sizes"], args.net + 3,
                                           cfg["stage_repeats"])
        if 6 in parts:
            say("6. one realm across the fleet (router links)")
            result["realm"] = realm(tmp, cfg, [args.net + 10 + i for i in range(5)])
        if 8 in parts:
            say("8. data path: runtime-added servers vs servers in haproxy.cfg")
            result["data_path"] = data_path(tmp, args.net + 3, cfg["datapath_rounds"],
                                            cfg["datapath_seconds"])
        if 9 in parts:
            say("9. certificate rotation: runtime API vs reload")
            result["rotation"] = rotation(tmp, args.net + 3,
                                          (args.wamp_held, args.wamp_rotating))
        if 7 in parts:
            say("7. faults between hosts (network namespaces)")
            result["faults"] = faults(tmp / "faults", list(BY_NAME))
    result["finished_utc"] = datetime.now(UTC).isoformat(timespec="seconds")
    result["duration_s"] = round(time.time() - started, 1)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    from bench.report import write_report
    write_report(result, args.results, args.out)
    print(f"\n{args.out}, {args.results / 'latest.md'} and plots written in "
          f"{result['duration_s']} s")


if __name__ == "__main__":
    main()
