"""Serf alone, no lbsync: how long a storm of N agents takes to be alive in one agent's view,
and what it costs in CPU. It separates Serf's own cost on this machine from lbsync's.

    .venv/bin/python -m bench.serf_only --members 200 --profile lan --gomaxprocs 1

One "lb" agent on 127.NET.0.1, then N member agents started at once, each joining the lb
(`--join lb`) or a random earlier member and the lb (`--join peers`). Prints one JSON line:
spawn time, time until the lb sees all N alive, the agents' CPU seconds during the storm,
and their CPU (cores) over the next 5 s. Loopback only; every agent is killed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import time

from bench.common import cpu_seconds
from lbsync.cluster.addresses import MAX_MEMBER, SERF_PORT, SERF_RPC_PORT, lb_ip, member_ip
from lbsync.serf.agent_cmd import serf_agent_argv


def alive_at(ip: str) -> int:
    r = subprocess.run(["serf", "members", "-rpc-addr", f"{ip}:{SERF_RPC_PORT}", "-status",
                        "alive"], capture_output=True, text=True, timeout=30, check=False)
    return max(0, len(r.stdout.splitlines()) - 1)  # less the lb itself


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--members", type=int, default=200)
    p.add_argument("--profile", choices=("lan", "wan", "local"), default="lan")
    p.add_argument("--gomaxprocs", default=None, help="GOMAXPROCS of every agent (default: Go's)")
    p.add_argument("--join", choices=("lb", "peers"), default="lb")
    p.add_argument("--net", type=int, default=231, help="use 127.NET.x.y addresses")
    p.add_argument("--limit", type=float, default=120.0, help="give up after this many s")
    args = p.parse_args()
    if not 1 <= args.members <= MAX_MEMBER:
        p.error(f"--members {args.members}: must be 1-{MAX_MEMBER}")
    env = dict(os.environ)
    if args.gomaxprocs:
        env["GOMAXPROCS"] = args.gomaxprocs
    lb = lb_ip(args.net)
    procs: list[subprocess.Popen[bytes]] = []

    def spawn(name: str, ip: str, join: list[str]) -> None:
        argv = serf_agent_argv(name, f"{ip}:{SERF_PORT}", f"{ip}:{SERF_RPC_PORT}",
                               profile=args.profile, retry_join=join, retry_interval="1s",
                               log_level="err")
        procs.append(subprocess.Popen(argv, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL, env=env,
                                      start_new_session=True))

    try:
        spawn("lb", lb, [])
        time.sleep(1)
        t0 = time.time()
        for i in range(1, args.members + 1):
            join = [f"{lb}:{SERF_PORT}"]
            if args.join == "peers" and i > 3:
                join.insert(0, f"{member_ip(args.net, random.randint(1, i - 1))}:{SERF_PORT}")
            spawn(f"n{i}", member_ip(args.net, i), join)
        spawned = time.time() - t0
        alive = 0
        while time.time() - t0 < args.limit:
            alive = alive_at(lb)
            if alive >= args.members:
                break
            time.sleep(0.2)
        converged = time.time() - t0
        storm_cpu = cpu_seconds(procs)
        time.sleep(5)
        after = (cpu_seconds(procs) - storm_cpu) / 5
        print(json.dumps({
            "members": args.members, "profile": args.profile, "gomaxprocs": args.gomaxprocs,
            "join": args.join, "spawn_s": round(spawned, 2),
            "all_alive_s": round(converged, 2) if alive >= args.members else None,
            "alive": alive, "storm_cpu_s": round(storm_cpu, 1),
            "next_5s_cores": round(after, 2), "load_avg": os.getloadavg()}))
    finally:
        for proc in procs:
            proc.kill()
        for proc in procs:
            proc.wait()


if __name__ == "__main__":
    main()
