"""lbsync's benchmark suite: one entry point for every measure of issue 5.

    .venv/bin/python bench/run.py --quick --out bench/results/quick.json   # < 5 minutes
    .venv/bin/python bench/run.py --out bench/results/full.json

Everything runs on loopback with real haproxy, serf and wrk processes (lbsync's devstack);
members' HTTP servers are light Python backends, so what is measured is the load balancer
(HAProxy + lbsync), not the application.
  1. join latency: member join -> first request served by it (bench/join_leave.py's run)
  2. graceful leave under load: failed requests, time until out of rotation
  3. crash under load (kill -9 of Serf agent + backend): failed requests, time to DOWN,
     time to removal from haproxy.cfg
  4. side by side, same run: scale cycles 1 -> 5 -> 1 at a fixed rate, lbsync's runtime-API
     mode vs the reload-per-change baseline (bench/baseline_handler.sh)
  5. scale: a join storm of N members -> all UP, an N-server plan, the agent's RSS/CPU
Writes the JSON to --out, bench/results/latest.md and PNG plots under bench/results/.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from common import BENCH, machine

from lbsync.cluster.devstack import DevStack, wait_for

RESULTS = BENCH / "results"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="fewer runs, 50 members; < 5 minutes")
    p.add_argument("--out", type=Path, required=True, help="JSON results")
    p.add_argument("--rate", type=int, default=800,
                   help="wrk's nominal rate (req/s; the measured rate is reported)")
    p.add_argument("--only", default="1,2,3,4,5", help="parts to run, e.g. 4,5")
    p.add_argument("--results", type=Path, default=RESULTS,
                   help="folder of latest.md and the plots (default bench/results)")
    # 127.150 is the local-cluster test's, 127.60-79 the agent tests': stay clear of them.
    p.add_argument("--net", type=int, default=200, help="first N of 127.N.0.x (uses N..N+4)")
    args = p.parse_args()
    parts = {int(x) for x in args.only.split(",")}
    q = args.quick
    cfg = {"join_runs": 10 if q else 20, "leave_runs": 1 if q else 3,
           "crash_runs": 1 if q else 3, "cycles": 3 if q else 10,
           "scale_sizes": [50] if q else [100, 200], "rate_req_s": args.rate}

    from churn import crash_under_load, join_latency, leave_under_load
    from scale import storm
    from sidebyside import side_by_side

    started = time.time()
    result: dict[str, object] = {
        "command": " ".join([".venv/bin/python", "bench/run.py", *sys.argv[1:]]),
        "quick": q, "config": cfg, "machine": machine(),
        "started_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "backends": "light Python HTTP servers (lbsync.cluster.backend): the load balancer "
                    "(HAProxy + lbsync) is what is measured",
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
                reloads0 = stack.master().reload_count()
                if 1 in parts:
                    print("1. join latency", flush=True)
                    result["join"] = join_latency(stack, cfg["join_runs"])
                if 2 in parts:
                    print("2. graceful leave under load", flush=True)
                    result["leave_under_load"] = leave_under_load(stack, cfg["leave_runs"], tmp,
                                                                  args.rate)
                if 3 in parts:
                    print("3. crash under load", flush=True)
                    result["crash_under_load"] = crash_under_load(stack, cfg["crash_runs"], tmp,
                                                                  args.rate)
                result["churn_reloads"] = stack.master().reload_count() - reloads0
            finally:
                stack.stop()
        if 4 in parts:
            print("4. side by side: runtime API vs reload per change", flush=True)
            result["side_by_side"] = side_by_side(tmp, cfg["cycles"], args.rate,
                                                  (args.net + 1, args.net + 2))
        if 5 in parts:
            print("5. scale", flush=True)
            result["scale"] = [storm(tmp, n, args.net + 3 + i)
                               for i, n in enumerate(cfg["scale_sizes"])]
    result["finished_utc"] = datetime.now(UTC).isoformat(timespec="seconds")
    result["duration_s"] = round(time.time() - started, 1)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    from report import write_report
    write_report(result, args.results, args.out)
    print(f"\n{args.out}, {args.results / 'latest.md'} and plots written in "
          f"{result['duration_s']} s")


if __name__ == "__main__":
    main()
