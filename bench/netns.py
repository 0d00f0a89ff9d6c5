"""Hosts on one machine: network namespaces on a bridge, and faults as iptables rules.

    fabric = Fabric(members=3)
    fabric.create()           # bridge lbf0 + namespaces lbsync-f-lb, lbsync-f-m1..m3
    fabric.partition(1)       # member 1 and the load balancer no longer hear each other
    fabric.heal()             # every rule gone
    fabric.destroy()          # namespaces, their processes, the bridge: all gone

Addresses (10.231.0.0/24, used by nothing else here): the load balancer 10.231.0.1,
member i 10.231.0.(10+i), the bridge itself 10.231.0.254, so the tests and the load
generators in the root namespace reach every host. No namespace has a default route, and
nothing forwards out of the bridge: the fabric cannot send a packet off this machine.

Faults hit the network as between hosts: rules live in the INPUT and OUTPUT chains of a
namespace's own iptables (`tc netem` is missing from these kernels, so loss is iptables'
`statistic` match). Everything is named with a prefix, so `destroy()` also removes what a
crashed earlier run left behind.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

NET = "10.231.0"
BRIDGE = "lbf0"
NS_PREFIX = "lbsync-f-"
SERF_PORT = 7946


class FabricError(RuntimeError):
    """A namespace, link or rule could not be made (the message has ip's/iptables' words)."""


def run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    if check and r.returncode != 0:
        raise FabricError(f"{' '.join(argv)}: {(r.stderr or r.stdout).strip()}")
    return r


def usable() -> str | None:
    """Why the fabric cannot be built here, or None (root, ip and iptables present)."""
    import os

    if os.geteuid() != 0:
        return "network namespaces need root"
    for binary in ("ip", "iptables"):
        if shutil.which(binary) is None:
            return f"{binary} not found (apt-get install -y iproute2 iptables)"
    return None


@dataclass
class Fabric:
    members: int = 3
    # The FORWARD rule that lets bridged frames through when br_netfilter hands them to
    # the root namespace's iptables (Docker sets that chain's policy to DROP).
    _forward_rule: tuple[str, ...] = ("FORWARD", "-i", BRIDGE, "-o", BRIDGE, "-j", "ACCEPT")

    # --- names and addresses ------------------------------------------------------------
    lb_ns = NS_PREFIX + "lb"
    lb_ip = f"{NET}.1"
    host_ip = f"{NET}.254"

    def member_ns(self, index: int) -> str:
        return f"{NS_PREFIX}m{index}"

    def member_ip(self, index: int) -> str:
        return f"{NET}.{10 + index}"

    @property
    def namespaces(self) -> list[str]:
        return [self.lb_ns, *(self.member_ns(i) for i in range(1, self.members + 1))]

    def prefix(self, ns: str) -> list[str]:
        """The argv prefix that runs a command inside namespace `ns`."""
        return ["ip", "netns", "exec", ns]

    # --- building and tearing down ------------------------------------------------------
    def create(self) -> None:
        self.destroy()  # whatever an interrupted run left
        run("ip", "link", "add", BRIDGE, "type", "bridge")
        run("ip", "addr", "add", f"{self.host_ip}/24", "dev", BRIDGE)
        run("ip", "link", "set", BRIDGE, "up")
        for ns, ip in [(self.lb_ns, self.lb_ip),
                       *((self.member_ns(i), self.member_ip(i))
                         for i in range(1, self.members + 1))]:
            host_end = "lbf-" + ns.removeprefix(NS_PREFIX)
            run("ip", "netns", "add", ns)
            run("ip", "link", "add", host_end, "type", "veth", "peer", "name", "eth0",
                "netns", ns)
            run("ip", "link", "set", host_end, "master", BRIDGE, "up")
            run("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", "eth0")
            run("ip", "-n", ns, "link", "set", "eth0", "up")
            run("ip", "-n", ns, "link", "set", "lo", "up")
        if _bridge_netfilter():
            run("iptables", "-I", *self._forward_rule)

    def destroy(self) -> None:
        """Kill every process left in our namespaces, delete them and the bridge."""
        listed = run("ip", "netns", "list", check=False).stdout.split()
        for ns in [n for n in listed if n.startswith(NS_PREFIX)]:
            for pid in run("ip", "netns", "pids", ns, check=False).stdout.split():
                run("kill", "-9", pid, check=False)
            run("ip", "netns", "del", ns, check=False)
        if Path(f"/sys/class/net/{BRIDGE}").exists():
            run("ip", "link", "del", BRIDGE, check=False)
        if shutil.which("iptables"):
            while run("iptables", "-C", *self._forward_rule, check=False).returncode == 0:
                run("iptables", "-D", *self._forward_rule, check=False)

    # --- faults -------------------------------------------------------------------------
    def _rule(self, ns: str, *rule: str) -> None:
        run(*self.prefix(ns), "iptables", "-A", *rule)

    def partition(self, index: int) -> None:
        """Member `index` and the load balancer lose every packet between them."""
        ns = self.member_ns(index)
        self._rule(ns, "INPUT", "-s", self.lb_ip, "-j", "DROP")
        self._rule(ns, "OUTPUT", "-d", self.lb_ip, "-j", "DROP")

    def partition_all(self) -> None:
        """The load balancer hears no member (the host's load still reaches it)."""
        for i in range(1, self.members + 1):
            self._rule(self.lb_ns, "INPUT", "-s", self.member_ip(i), "-j", "DROP")
            self._rule(self.lb_ns, "OUTPUT", "-d", self.member_ip(i), "-j", "DROP")

    def one_way(self, index: int) -> None:
        """Asymmetric: the load balancer's packets to member `index` are lost; the
        member's packets to the load balancer arrive."""
        self._rule(self.member_ns(index), "INPUT", "-s", self.lb_ip, "-j", "DROP")

    def gossip_loss(self, index: int) -> None:
        """Member `index`'s Serf traffic (7946, TCP and UDP, both ways) is lost; its
        HTTP and WebSocket traffic flows."""
        ns = self.member_ns(index)
        for proto in ("tcp", "udp"):
            for chain, way in (("INPUT", "--dport"), ("INPUT", "--sport"),
                               ("OUTPUT", "--dport"), ("OUTPUT", "--sport")):
                self._rule(ns, chain, "-p", proto, way, str(SERF_PORT), "-j", "DROP")

    def packet_loss(self, index: int, probability: float) -> None:
        """Member `index` loses `probability` of its packets, each way, at random."""
        ns = self.member_ns(index)
        for chain, iface in (("INPUT", "-i"), ("OUTPUT", "-o")):
            self._rule(ns, chain, iface, "eth0", "-m", "statistic", "--mode", "random",
                       "--probability", f"{probability:.2f}", "-j", "DROP")

    def heal(self) -> None:
        for ns in self.namespaces:
            run(*self.prefix(ns), "iptables", "-F", check=False)


def _bridge_netfilter() -> bool:
    try:
        return Path("/proc/sys/net/bridge/bridge-nf-call-iptables").read_text().strip() == "1"
    except OSError:
        return False
