"""One Crossbar edge node's cost by its number of proxy workers: from `crossbar start` to
the first 200 on /info and to every proxy worker listening, and the RSS of the controller
and all its workers.

    .venv/bin/python -m bench.edge_node --out bench/results/edge_node.json

Measured, not asserted (it used to run in every test run, as a test that checked nothing).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil

from lbsync.cluster.addresses import HTTP_PORT, member_ip
from lbsync.edge.crossbar import prepare_cbdir, render_crossbar_config, write_crossbar_config
from tests.rig.procs import StackError, reap, wait_for

CROSSBAR = Path(sys.executable).parent / "crossbar"


@dataclass(frozen=True)
class NodeCost:
    proxies: int
    info_200_s: float  # `crossbar start` -> the first 200 on /info
    all_listening_s: float  # `crossbar start` -> every proxy worker listening
    processes: int  # the controller, the router and the proxy workers
    rss_mb: float  # all of them together


def _info_ok(proc: subprocess.Popen[bytes], url: str) -> bool:
    if proc.poll() is not None:
        raise StackError(f"crossbar exited {proc.returncode} before /info answered")
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return bool(r.status == 200)
    except OSError:
        return False


def _listeners(ip: str, port: int) -> int:
    """Processes listening on the shared port (one per running proxy worker)."""
    return len({c.pid for c in psutil.net_connections(kind="tcp")
                if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port
                and c.laddr.ip == ip})


def measure(workdir: Path, ip: str, proxies: int) -> NodeCost:
    """Start one node with `proxies` proxy workers on IP:HTTP_PORT, measure it, stop it."""
    name = f"m{proxies}edge"
    cbdir = workdir / name
    prepare_cbdir(cbdir)
    write_crossbar_config(cbdir, render_crossbar_config(name, ip, HTTP_PORT, proxies=proxies))
    with (cbdir / "crossbar.log").open("ab") as log:
        started = time.monotonic()
        proc = subprocess.Popen(
            [str(CROSSBAR), "start", "--cbdir", str(cbdir), "--loglevel", "warn"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True)
    try:
        info_200 = wait_for(lambda: _info_ok(proc, f"http://{ip}:{HTTP_PORT}/info"), 60,
                            f"{name} /info")
        wait_for(lambda: _listeners(ip, HTTP_PORT) == proxies, 60,
                 f"{proxies} proxy workers listening")
        all_listening = time.monotonic() - started
        time.sleep(1.0)  # let the last worker finish its start-up allocations
        root = psutil.Process(proc.pid)
        procs = [root, *root.children(recursive=True)]
        rss = sum(p.memory_info().rss for p in procs) / 2**20
        return NodeCost(proxies, round(info_200, 2), round(all_listening, 2), len(procs),
                        round(rss, 1))
    finally:
        reap(proc, 10)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--proxies", default="1,2,4", help="proxy worker counts, e.g. 1,2,4")
    p.add_argument("--net", type=int, default=235, help="the node runs on 127.N.0.11")
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    if not CROSSBAR.exists():
        p.error(f"no crossbar at {CROSSBAR} (pip install -e '.[edge]')")
    try:
        counts = [int(x) for x in args.proxies.split(",")]
    except ValueError:
        p.error(f"--proxies {args.proxies!r}: a comma-separated list of numbers")
    rows = []
    with tempfile.TemporaryDirectory(prefix="lbsync-bench-") as tmp:
        for proxies in counts:
            row = measure(Path(tmp), member_ip(args.net, 1), proxies)
            rows.append(row)
            print(f"  {row.proxies} proxies | /info 200 after {row.info_200_s:.2f} s | all "
                  f"listening after {row.all_listening_s:.2f} s | {row.processes} processes | "
                  f"{row.rss_mb:.0f} MB ({row.rss_mb / row.processes:.0f} MB each)", flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({
            "command": "python -m bench.edge_node " + " ".join(sys.argv[1:]),
            "nodes": [asdict(r) for r in rows]}, indent=2) + "\n")


if __name__ == "__main__":
    main()
