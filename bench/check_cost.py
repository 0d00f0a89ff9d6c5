"""What `--check-downinter` buys and costs, on a real HAProxy with lbsync's own config.

    .venv/bin/python -m bench.check_cost --downinter 100ms,50ms,20ms --out /tmp/check.json

A joiner is added DOWN (lbsync.apply.steps) and comes UP on its first passing check,
which HAProxy runs one downinter after the add; and a server that stays DOWN is checked
every downinter. For each value: the add -> UP time of one server (lbsync's add commands
in one Runtime API session, `show servers state` read every millisecond), median of
`--runs`; then HAProxy's CPU (share of one core, over `--seconds`) with `--down` servers
added the same way towards closed ports, so they stay DOWN. HAProxy's config is lbsync's
template (haproxy.cfg.j2) rendered with the value; the joiner is the rig's light HTTP
member (tests.rig.httpmember). Loopback only (127.NET.x.y); HAProxy and the member stop
at the end. Prints and writes one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import cpu_seconds, haproxy_processes
from lbsync.apply import steps
from lbsync.cluster.addresses import HTTP_PORT
from lbsync.desired import explicit_cookies
from lbsync.haproxy.binary import haproxy_version
from lbsync.haproxy.runtime import RuntimeAPI, RuntimeAPIError
from lbsync.model import Plan, Server
from lbsync.render import load_template, render_haproxy
from lbsync.settings import Settings, parse_duration
from tests.rig.devstack import checkout_env, http_member_argv
from tests.rig.procs import reap, wait_for


def _listening(ip: str, port: int) -> bool:
    try:
        socket.create_connection((ip, port), timeout=1).close()
    except OSError:
        return False
    return True


def _add(api: RuntimeAPI, settings: Settings, servers: list[Server], version: tuple[int, ...]
         ) -> None:
    todo = steps(Plan(add=tuple(servers)), settings, dynamic_cookies=not explicit_cookies(version))
    api.execute([c for st in todo for c in st.commands])


def _remove(api: RuntimeAPI, backend: str, names: list[str]) -> None:
    api.execute([c for n in names for c in (f"set server {backend}/{n} state maint",
                                            f"del server {backend}/{n}")])


def measure(downinter: str, args: argparse.Namespace, work: Path, version: tuple[int, ...]
            ) -> dict[str, Any]:
    lb = f"127.{args.net}.0.1"
    settings = Settings(
        check_downinter=parse_duration(downinter, "--downinter"),
        haproxy_config=work / "haproxy.cfg", runtime_socket=str(work / "admin.sock"),
        runtime_tcp="", frontend_bind=f"{lb}:8080", stats_bind=f"{lb}:1936")
    label, source = load_template(None)
    settings.haproxy_config.write_text(
        render_haproxy(label, source, settings, [], explicit_cookies(version)))
    haproxy = subprocess.Popen(["haproxy", "-db", "-f", str(settings.haproxy_config)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    api = RuntimeAPI(settings.runtime_socket)
    try:
        deadline = time.monotonic() + 10
        while True:  # the worker answers a moment after the master made the socket
            try:
                api.servers_state(settings.backend)
                break
            except RuntimeAPIError:
                if haproxy.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"haproxy did not start on {settings.haproxy_config}"
                                     ) from None
                time.sleep(0.02)
        up_ms = []
        for i in range(args.runs):
            name = f"join{i}"
            start = time.monotonic()
            _add(api, settings, [Server(name, f"127.{args.net}.0.2", HTTP_PORT)], version)
            added = time.monotonic()
            while not any(s.name == name and s.op_state == 2
                          for s in api.servers_state(settings.backend)):
                if time.monotonic() - start > 10:
                    raise SystemExit(f"{name} not UP 10 s after its add")
                time.sleep(0.001)
            up_ms.append((time.monotonic() - added) * 1000)
            _remove(api, settings.backend, [name])
        down = [Server(f"down{i}", f"127.{args.net}.1.{i % 250 + 1}", 2000 + i)
                for i in range(args.down)]
        _add(api, settings, down, version)
        time.sleep(2)  # past the forced DOWN, into the downinter rhythm
        # The master and its worker (lbsync's config is master-worker).
        procs = haproxy_processes(settings.haproxy_config)
        cpu0, t0 = cpu_seconds(procs), time.monotonic()
        time.sleep(args.seconds)
        cpu = (cpu_seconds(procs) - cpu0) / (time.monotonic() - t0)
        states = {s.op_state for s in api.servers_state(settings.backend)}
        if states != {0}:
            raise SystemExit(f"the {args.down} servers were not all DOWN: op states {states}")
        return {"downinter": downinter, "add_to_up_ms_p50": round(statistics.median(up_ms), 1),
                "add_to_up_ms_max": round(max(up_ms), 1),
                "haproxy_cpu_pct_with_down": round(100 * cpu, 1),
                "checks_per_s_expected": round(args.down / settings.check_downinter)}
    finally:
        haproxy.terminate()
        haproxy.wait(10)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--downinter", default="100ms,50ms,20ms", help="comma-separated durations")
    p.add_argument("--runs", type=int, default=15, help="joins per value")
    p.add_argument("--down", type=int, default=200, help="servers that stay DOWN")
    p.add_argument("--seconds", type=float, default=10.0, help="CPU sample length")
    p.add_argument("--net", type=int, default=232, help="use 127.NET.x.y addresses")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    values = [v.strip() for v in args.downinter.split(",") if v.strip()]
    for v in values:
        try:
            if parse_duration(v, "--downinter") <= 0:
                raise ValueError
        except Exception:
            p.error(f"--downinter {v!r}: give positive durations, e.g. 100ms,20ms")
    if not 1 <= args.runs <= 200 or not 0 <= args.down <= 1000:
        p.error("--runs must be 1-200 and --down 0-1000")
    version = haproxy_version()
    member_ip = f"127.{args.net}.0.2"
    member = subprocess.Popen(http_member_argv([("join", member_ip)]), env=checkout_env(),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rows = []
    try:
        wait_for(lambda: _listening(member_ip, HTTP_PORT), 10, "the light HTTP member")
        with tempfile.TemporaryDirectory(prefix="lbsync-check-") as tmp:
            for v in values:
                rows.append(measure(v, args, Path(tmp), version))
                print(json.dumps(rows[-1]), flush=True)
    finally:
        reap(member, 5)
    result = {"command": "python -m bench.check_cost " + " ".join(sys.argv[1:]),
              "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                          "haproxy": ".".join(map(str, version))},
              "down_servers": args.down, "rows": rows}
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
