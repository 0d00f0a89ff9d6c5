"""What `lbsync up`, `scale` and `down` do, with a live per-node progress table."""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import psutil
import requests

from ..edge import links as L
from ..haproxy.runtime import RuntimeAPI
from ..model import LbsyncError
from ..serf.rpc import SerfRPC
from .addresses import SERF_RPC_PORT
from .local import (
    ENV_FILE,
    MAX_NODES,
    ClusterError,
    Layout,
    Supervisor,
    leftovers,
    read_state,
    write_files,
)


@dataclass(frozen=True)
class NodeView:
    name: str
    serf: str  # Serf status seen by the load balancer, or "-"
    crossbar: str  # "serving" when /info answers, else "-"
    ready: str  # the node's ready tag
    haproxy: str  # UP, DOWN, DRAIN, MAINT or "-"
    links: str = "-"  # the node's router links up / wanted, from its own folder


def observe(layout: Layout, names: list[str]) -> dict[str, NodeView]:
    """One look at every node from the load balancer's side; failures read as '-'."""
    members: dict[str, tuple[str, str]] = {}
    with contextlib.suppress(LbsyncError, OSError), SerfRPC(
            layout.lb_ip, SERF_RPC_PORT, layout.serf_auth_key(), timeout=1.0) as rpc:
        members = {m.name: (str(m.status), m.tags.get("ready", "-")) for m in rpc.members()}
    servers: dict[str, str] = {}
    with contextlib.suppress(LbsyncError, OSError):
        servers = {s.name: s.state_word for s in
                   RuntimeAPI(layout.lb["admin_socket"], timeout=1.0).servers_state("nodes")}
    views = {}
    for name in names:
        node = layout.node(int(name.removeprefix("node")))
        serving = "-"
        with contextlib.suppress(requests.RequestException):
            if requests.get(f"http://{node.ip}:{node.port}/info", timeout=0.5).ok:
                serving = "serving"
        serf, ready = members.get(name, ("-", "-"))
        views[name] = NodeView(name, serf, serving, ready, servers.get(name, "-"),
                               _links(node.cbdir))
    return views


def _links(cbdir: Path) -> str:
    """UP/WANTED of the node's router links, read from its Crossbar folder, or "-"."""
    try:
        wanted = L.read_wanted(cbdir)
        report = L.read_state(cbdir)
    except L.LinkError:
        return "-"
    return "-" if wanted is None else L.links_tag(report, wanted)


class Progress:
    """A table redrawn in place on a terminal, or one line per change elsewhere."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.tty = out.isatty()
        self.drawn = 0
        self.last: dict[str, NodeView] = {}

    def show(self, views: dict[str, NodeView], elapsed: float) -> None:
        if self.tty:
            lines = [f"{'NODE':8} {'SERF':8} {'CROSSBAR':9} {'READY':6} {'LINKS':6} "
                     f"{'HAPROXY':8}"]
            lines += [f"{v.name:8} {v.serf:8} {v.crossbar:9} {v.ready:6} {v.links:6} "
                      f"{v.haproxy:8}" for v in views.values()]
            lines.append(f"{elapsed:5.1f}s")
            if self.drawn:
                self.out.write(f"\x1b[{self.drawn}F")
            self.out.write("".join(f"\x1b[2K{line}\n" for line in lines))
            self.drawn = len(lines)
        else:
            for name, v in views.items():
                if self.last.get(name) != v:
                    self.out.write(f"{elapsed:6.1f}s {v.name}: serf={v.serf} "
                                   f"crossbar={v.crossbar} ready={v.ready} links={v.links} "
                                   f"haproxy={v.haproxy}\n")
            self.last = dict(views)
        self.out.flush()


def wait_nodes(layout: Layout, names: list[str], done: Callable[[NodeView], bool],
               timeout: float, out: TextIO, what: str) -> float:
    progress = Progress(out)
    started = time.monotonic()
    while True:
        views = observe(layout, names)
        elapsed = time.monotonic() - started
        progress.show(views, elapsed)
        if all(done(v) for v in views.values()):
            return elapsed
        if elapsed > timeout:
            late = ", ".join(n for n, v in views.items() if not done(v))
            raise ClusterError(f"{late}: not {what} after {timeout:g}s; see {layout.dir}/logs/ "
                               "(the cluster keeps running: `lbsync down` stops it)")
        time.sleep(0.25)


def _is_up(v: NodeView) -> bool:
    return v.haproxy == "UP"


def _is_gone(v: NodeView) -> bool:
    return v.haproxy == "-" and v.serf in ("-", "left")


def up(layout: Layout, nodes: int, proxies: int, drain_timeout: float, timeout: float,
       out: TextIO = sys.stdout) -> float:
    if not 1 <= nodes <= MAX_NODES:
        raise ClusterError(f"--nodes must be 1-{MAX_NODES}")
    sup = Supervisor(layout)
    if sup.running():
        raise ClusterError(f"a cluster already runs in {layout.dir}: use `lbsync scale N` "
                           "or `lbsync down`")
    indexes = list(range(1, nodes + 1))
    write_files(layout, indexes, proxies, drain_timeout)
    started = time.monotonic()
    sup.start()
    wait_nodes(layout, [f"node{i}" for i in indexes], _is_up, timeout, out, "UP")
    took = time.monotonic() - started
    out.write(f"\n{nodes} edge node(s) UP in {took:.1f}s\n{layout.endpoints()}\n")
    return took


def scale(layout: Layout, nodes: int, timeout: float, out: TextIO = sys.stdout) -> float:
    if not 1 <= nodes <= MAX_NODES:
        raise ClusterError(f"scale: N must be 1-{MAX_NODES} (to stop everything: lbsync down)")
    state = read_state(layout)
    sup = Supervisor(layout)
    if not sup.running():
        raise ClusterError(f"the cluster in {layout.dir} is not running (lbsync up)")
    if not layout.keyed():
        # Its agents gossip in the clear: new nodes, which get the key, could not join them,
        # and rewriting supervisord.conf would restart every agent with a key mid-scale.
        raise ClusterError(f"the cluster in {layout.dir} was started by an lbsync without "
                           "gossip encryption (no serf.key): run `lbsync down`, then "
                           "`lbsync up` again to make its keys")
    current: list[int] = sorted(state["nodes"])
    proxies, drain_timeout = int(state["proxies"]), float(state["drain_timeout"])
    started = time.monotonic()
    if nodes > len(current):
        free = (i for i in range(1, MAX_NODES + 1) if i not in current)
        new = sorted(current + [next(free) for _ in range(nodes - len(current))])
        write_files(layout, new, proxies, drain_timeout)
        sup.update()
        added = [f"node{i}" for i in new if i not in current]
        out.write(f"adding {', '.join(added)}\n")
        wait_nodes(layout, added, _is_up, timeout, out, "UP")
    elif nodes < len(current):
        keep, drop = current[:nodes], current[nodes:]
        names = [f"node{i}" for i in drop]
        out.write(f"draining {', '.join(names)} (drain timeout {drain_timeout:g}s)\n")
        # The sidecar drains, leaves the gossip and stops Crossbar; only then do the
        # other processes of those nodes go.
        sidecars = [f"{n}:{n}-sidecar" for n in names]
        sup.stop(sidecars)
        wait_nodes(layout, names, _is_gone, drain_timeout + timeout, out, "gone")
        # The load balancer saw them leave; their sidecars still give it a second and stop
        # Crossbar. Stopping the groups before would kill Serf in the middle of its leave.
        deadline = time.monotonic() + timeout
        while any(sup.states().get(p) in ("RUNNING", "STOPPING") for p in sidecars):
            if time.monotonic() > deadline:
                break  # stop_group below ends them
            time.sleep(0.1)
        write_files(layout, keep, proxies, drain_timeout)
        sup.update()
    took = time.monotonic() - started
    out.write(f"{nodes} edge node(s) in {took:.1f}s\n")
    return took


def down(layout: Layout, timeout: float, out: TextIO = sys.stdout) -> int:
    """Stop supervisord and everything under it; returns how many stragglers were killed."""
    sup = Supervisor(layout)
    sup.shutdown(timeout)
    stragglers = leftovers(layout)
    for p in stragglers:
        with contextlib.suppress(psutil.Error):
            p.kill()
    psutil.wait_procs(stragglers, timeout=5)
    (layout.dir / ENV_FILE).unlink(missing_ok=True)
    still = leftovers(layout)
    if still:
        raise ClusterError(f"processes survived lbsync down: {[p.pid for p in still]}")
    out.write(f"stopped the cluster in {layout.dir}"
              + (f" (killed {len(stragglers)} straggler(s))" if stragglers else "") + "\n")
    return len(stragglers)
