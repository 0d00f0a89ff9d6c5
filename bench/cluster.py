"""The local cluster's cost: `lbsync up` to all UP, memory per edge node, `scale 1 -> 4`.

    .venv/bin/python -m bench.cluster --runs 3 --out bench/results/cluster.json

Each run starts a fresh cluster with `lbsync up --nodes 3` (the real CLI, supervisord,
HAProxy, Serf, Crossbar), measures the RSS of every edge node (its Serf agent, Crossbar
controller and workers, sidecar), stops it, then times `lbsync up --nodes 1` +
`lbsync scale 4` on another fresh cluster. Medians are reported.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from lbsync.cluster.local import Layout, Supervisor


def lbsync(*args: str) -> float:
    started = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "lbsync", *args], capture_output=True, text=True,
                       timeout=600, check=False)
    if r.returncode != 0:
        raise SystemExit(f"lbsync {' '.join(args)} failed:\n{r.stdout}\n{r.stderr}")
    return time.monotonic() - started


def node_rss_mb(layout: Layout, nodes: int) -> list[float]:
    """RSS of each node's processes (with their children), in MB."""
    info = Supervisor(layout).rpc().supervisor.getAllProcessInfo()
    per_node: dict[str, float] = {}
    for p in info:
        if not p["group"].startswith("node") or not p["pid"]:
            continue
        procs = [psutil.Process(p["pid"])]
        procs += procs[0].children(recursive=True)
        rss = sum(q.memory_info().rss for q in procs if q.is_running())
        per_node[p["group"]] = per_node.get(p["group"], 0.0) + rss / 2**20
    assert len(per_node) == nodes, per_node
    return sorted(per_node.values())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--proxies", type=int, default=None,
                   help="proxy workers per node (default: lbsync's, 2 x CPU cores)")
    p.add_argument("--net", type=int, default=140)
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    extra = ["--proxies", str(args.proxies)] if args.proxies else []
    up_s, scale_s, rss = [], [], []
    for run in range(args.runs):
        with tempfile.TemporaryDirectory(prefix="lbsync-bench-") as tmp:
            layout = Layout(Path(tmp) / "c", args.net)
            try:
                up_s.append(lbsync("up", "--nodes", "3", "--dir", str(layout.dir),
                                   "--net", str(args.net), *extra))
                time.sleep(2)  # let the workers settle before reading memory
                rss.extend(node_rss_mb(layout, 3))
            finally:
                lbsync("down", "--dir", str(layout.dir))
        with tempfile.TemporaryDirectory(prefix="lbsync-bench-") as tmp:
            layout = Layout(Path(tmp) / "c", args.net)
            try:
                lbsync("up", "--nodes", "1", "--dir", str(layout.dir), "--net", str(args.net),
                       *extra)
                scale_s.append(lbsync("scale", "4", "--dir", str(layout.dir)))
            finally:
                lbsync("down", "--dir", str(layout.dir))
        print(f"run {run + 1}: up 3 -> all UP {up_s[-1]:.1f}s, scale 1 -> 4 {scale_s[-1]:.1f}s, "
              f"node RSS {', '.join(f'{m:.0f}' for m in rss[-3:])} MB", flush=True)

    result = {
        "command": "python -m bench.cluster " + " ".join(sys.argv[1:]),
        "machine": {"platform": platform.platform(), "cpus": psutil.cpu_count(),
                    "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
                    "python": platform.python_version()},
        "proxies_per_node": args.proxies or "default (2 x CPU cores)",
        "up_3_nodes_s": {"median": statistics.median(up_s), "samples": up_s},
        "scale_1_to_4_s": {"median": statistics.median(scale_s), "samples": scale_s},
        "rss_per_node_mb": {"median": statistics.median(rss), "samples": rss},
    }
    print(json.dumps({k: v for k, v in result.items() if k != "machine"}, indent=2))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
