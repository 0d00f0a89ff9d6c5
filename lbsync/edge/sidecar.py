"""The edge-node sidecar behind `lbsync node`: join the load balancer when Crossbar
serves, and leave it without cutting anyone off.

Start: wait for the local Serf agent, tag this node `role=edge port=... ready=0`, answer
HAProxy's agent-check, and once `GET /info` answers 200 set `ready=1` (the load balancer
adds a member only then; the agent-check then says `ready` for a few seconds, taking back
a `maint` a stop that did not finish left behind). Stop (SIGTERM/SIGINT only set a flag):
the agent-check answers `maint` and the tag turns `ready=0`, so HAProxy sends no new
session, not even a client with this node's cookie (drain would); wait until no
connection is left on the service port (or `--drain-timeout`); `serf leave`; give the load
balancer a second to remove the server; then run `--stop-command` (how the supervisor
stops Crossbar). One log line per step, with its duration.

With `--cbdir` (and router links turned on by `lbsync crossbar-config`), the sidecar also
keeps this node's router linked to every other live edge node (lbsync.edge.links): twice a
second it writes the other linkable Serf members to CBDIR/links.json, reads the links'
state back, logs each link that comes up or goes down, and tags the node `link-port=...`
and `links=UP/WANTED` (at most every LINKS_TAG_EVERY seconds, tags being gossiped to all,
but at once when every link is up). The first ready=1 waits for the links to every peer
that already serves clients, so HAProxy never sends a client to a node cut off from the
rest of the realm (at most `--links-wait`: a peer whose router never answers must not stop
the fleet from growing). Afterwards a link going down is logged, not a reason to stop
serving.

Every effect (Serf, the agent-check server, the HTTP probe, the connection count, the stop
command, the link files, the clock) comes in through `Effects`, so tests drive the
sequence with fakes.
"""

from __future__ import annotations

import http.client
import ipaddress
import logging
import stat
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Protocol

import psutil

from .. import __version__
from ..model import LbsyncError, Member
from ..serf.rpc import SerfAuthError, SerfError, SerfRPC
from ..settings import default, what
from ..validate import name_problem
from . import links as L
from .crossbar import ROUTER_SOCKET

log = logging.getLogger(__name__)

POLL = 0.2  # how often waiting loops look at the stop flag and the world
SERF_BACKOFF_MAX = 2.0
LB_GRACE = 1.0  # after `leave`: the load balancer removes the server meanwhile
LINK_POLL = 0.5  # how often the members and the links' state are looked at
WAITING_LOG_EVERY = 10.0  # seconds between "still waiting for links" lines
# The `links` tag changes at most this often: every tag change is gossiped to the whole
# cluster, and while n nodes join, each node's count would change n times.
LINKS_TAG_EVERY = 10.0


@dataclass(frozen=True)
class NodeConfig:
    name: str
    serf_rpc: tuple[str, int]
    host: str
    port: int
    agent_port: int
    weight: int | None = None
    # The defaults are the settings table's (lbsync.settings.TABLE), as `lbsync node` has them.
    drain_timeout: float = default("drain_timeout")
    stop_command: str = default("stop_command")
    serf_auth_key: str | None = None
    cbdir: Path | None = None
    link_port: int = default("link_port")
    links_wait: float = default("links_wait")  # the longest ready=1 waits for the links

    @property
    def where(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def tags(self, ready: bool) -> dict[str, str]:
        tags = {"role": "edge", "port": str(self.port), "agent-port": str(self.agent_port),
                "version": __version__, "ready": "1" if ready else "0"}
        if self.weight is not None:
            tags["weight"] = str(self.weight)
        return tags


class Clock(Protocol):
    def now(self) -> float: ...
    def sleep(self, seconds: float) -> None: ...


class Serf(Protocol):
    """The part of SerfRPC the sidecar uses."""

    @property
    def closed(self) -> bool: ...
    def tags(self, set: Mapping[str, str] | None = None,
             delete: Iterable[str] | None = None) -> None: ...
    def leave(self, timeout: float = 30.0) -> None: ...
    def close(self) -> None: ...
    def members(self) -> list[Member]: ...


class Agent(Protocol):
    """The agent-check server (lbsync.edge.agentcheck.AgentCheck)."""

    def start(self) -> None: ...
    def maint(self) -> None: ...
    def resume(self) -> None: ...
    def close(self) -> None: ...


class Links(Protocol):
    """The node's link files in CBDIR (lbsync.edge.links)."""

    def enabled(self) -> bool: ...  # did crossbar-config turn the router links on?
    def write_wanted(self, peers: Mapping[str, L.Peer]) -> bool: ...
    def read_state(self) -> L.LinksReport | None: ...  # None: no live router has reported


@dataclass
class Effects:
    connect_serf: Callable[[], Serf]  # raises SerfError while the agent is unreachable
    agent: Agent
    ready: Callable[[], bool]  # does the service answer GET /info with 200?
    connections: Callable[[], int]  # ESTABLISHED connections on the service port
    run_command: Callable[[str], int]  # exit status of a /bin/sh command
    clock: Clock
    links: Links | None = None  # None: no --cbdir, no router links
    # Makes the router's unix socket private when Crossbar left it open; what it did, or
    # None (nothing to do, or no --cbdir).
    private_socket: Callable[[], str | None] = lambda: None


class Sidecar:
    def __init__(self, config: NodeConfig, effects: Effects, stop: threading.Event) -> None:
        self.config = config
        self.fx = effects
        self.stop = stop
        self._serf: Serf | None = None
        self._ready = False
        self._tags_failing = False
        self._link_tags: dict[str, str] = {}
        self._links_next = 0.0  # when to look at the links again
        self._links_up: set[str] = set()
        self._links_wanted: dict[str, L.Peer] = {}
        self._links_ok = True  # are the links to the serving peers up?
        self._links_waiting_logged = -WAITING_LOG_EVERY
        self._links_failing = False
        self._links_tag_at = -LINKS_TAG_EVERY  # when the `links` tag last changed
        self._links_wait_from: float | None = None  # when ready=1 began to wait for links

    # --- the whole life -----------------------------------------------------------------

    def run(self) -> int:
        """Serve until the stop flag, then drain, leave and stop; 0 when every step worked."""
        c, fx = self.config, self.fx
        started = fx.clock.now()
        fx.agent.start()
        log.info("agent-check listening on %s:%d", c.host, c.agent_port)
        try:
            if self._connect(startup=True):
                self._serve()
            ok = self._shut_down()
        finally:
            fx.agent.close()
            if self._serf is not None:
                self._serf.close()
        log.info("done after %.1f s: exit %d", fx.clock.now() - started, 0 if ok else 1)
        return 0 if ok else 1

    # --- start and serve -----------------------------------------------------------------

    def _connect(self, startup: bool) -> bool:
        """Connect to the Serf agent, retrying with backoff until it answers or stop is
        asked; False when stop came first. A refused auth key is not retried."""
        host, port = self.config.serf_rpc
        t0 = self.fx.clock.now()
        delay = 0.1
        logged = False
        while not self.stop.is_set():
            try:
                self._serf = self.fx.connect_serf()
            except SerfAuthError:
                raise
            except SerfError as e:
                if not logged:
                    log.info("waiting for the serf agent at %s:%d (%s)", host, port, e)
                    logged = True
                self._sleep_unless_stopped(delay)
                delay = min(delay * 2, SERF_BACKOFF_MAX)
                continue
            log.info("serf agent at %s:%d %s after %.1f s", host, port,
                     "answers" if startup else "answers again", self.fx.clock.now() - t0)
            return True
        return False

    def _serve(self) -> None:
        """Until the stop flag: keep this node's tags on the Serf agent, and turn ready=1
        once /info answers. Tags set over RPC die with the agent, so a lost connection
        means reconnect and tag again."""
        fx = self.fx
        t0 = fx.clock.now()
        tagged = False  # the agent holds our current tags
        log.info("waiting for http://%s/info to answer 200", self.config.where)
        while not self.stop.is_set():
            assert self._serf is not None
            if self._serf.closed:
                log.warning("serf connection lost: reconnecting")
                self._serf.close()
                if not self._connect(startup=False):
                    return
                tagged = False
            if said := fx.private_socket():
                log.info("%s", said)
            if self._look_at_links():
                tagged = False  # the link tags changed
            if not tagged:
                tagged = self._try_tags()
            # ready=0 goes out first: the member is known before it takes traffic.
            if tagged and not self._ready and self._links_ok and fx.ready():
                log.info("http://%s/info answers 200 after %.1f s", self.config.where,
                         fx.clock.now() - t0)
                self._ready = True
                fx.agent.resume()
                tagged = self._try_tags()
            self._sleep_unless_stopped(POLL)

    def _look_at_links(self) -> bool:
        """Every LINK_POLL: tell the router which peers to link to, read back which links
        are up, log the changes. True when the link tags changed."""
        fx, links = self.fx, self.fx.links
        if links is None or fx.clock.now() < self._links_next:
            return False
        self._links_next = fx.clock.now() + LINK_POLL
        if not links.enabled():
            self._links_ok = True
            return self._set_link_tags({})
        assert self._serf is not None
        try:
            members = self._serf.members()
            wanted = L.wanted_peers(members, self.config.name)
            links.write_wanted(wanted)
            report = links.read_state()
        except (SerfError, L.LinkError, OSError) as e:
            if not self._links_failing:
                log.warning("router links: cannot look at them (retrying): %s", e)
            self._links_failing = True
            return False
        self._links_failing = False
        up = L.linked(report, wanted)
        for name in sorted(up - self._links_up):
            log.info("router link to %s up (%s)", name, wanted[name].url)
        for name in sorted((self._links_up - up) & set(wanted)):
            log.warning("router link to %s down (%s)", name, wanted[name].url)
        for name in sorted(set(self._links_wanted) - set(wanted)):
            log.info("router link to %s removed: %s left the cluster", name, name)
        self._links_up, self._links_wanted = up, wanted
        missing = L.ready_peers(members, self.config.name) - up
        self._links_ok = not missing
        if missing and not self._ready:
            now = fx.clock.now()
            if self._links_wait_from is None:
                self._links_wait_from = now
            names = ", ".join(sorted(missing))
            if now - self._links_wait_from >= self.config.links_wait:
                # A peer whose router never answers must not keep the fleet from growing;
                # its own clients cannot be served anyway.
                log.warning("ready=1 without the router links to %s: not up after %g s "
                            "(--links-wait)", names, self.config.links_wait)
                self._links_ok = True
            elif now - self._links_waiting_logged >= WAITING_LOG_EVERY:
                self._links_waiting_logged = now
                log.info("ready=1 waits for the router links to %s", names)
        count = L.links_tag(report, wanted)
        complete = len(up) == len(wanted)  # said at once: the news everyone waits for
        if (self._link_tags.get(L.LINKS_TAG) not in (None, count) and not complete
                and fx.clock.now() - self._links_tag_at < LINKS_TAG_EVERY):
            count = self._link_tags[L.LINKS_TAG]  # later
        return self._set_link_tags({L.LINK_TAG: str(self.config.link_port), L.LINKS_TAG: count})

    def _set_link_tags(self, tags: dict[str, str]) -> bool:
        changed = tags != self._link_tags
        if changed:
            self._links_tag_at = self.fx.clock.now()
        self._link_tags = tags
        return changed

    def _try_tags(self) -> bool:
        """Set the tags; on failure warn (once in a row) and return False to retry."""
        try:
            self._set_tags("tags set")
        except SerfError as e:
            if not self._tags_failing:
                log.warning("setting tags failed (retrying): %s", e)
            self._tags_failing = True
            return False
        self._tags_failing = False
        return True

    def _set_tags(self, what: str) -> None:
        assert self._serf is not None
        tags = {**self.config.tags(self._ready), **self._link_tags}
        t0 = self.fx.clock.now()
        gone = [t for t in (L.LINK_TAG, L.LINKS_TAG) if t not in tags]
        self._serf.tags(set=tags, delete=gone)
        log.info("%s: %s (%.0f ms)", what, " ".join(f"{k}={v}" for k, v in tags.items()),
                 1000 * (self.fx.clock.now() - t0))

    # --- stop ----------------------------------------------------------------------------

    def _shut_down(self) -> bool:
        c, fx = self.config, self.fx
        log.info("stop requested: draining")
        fx.agent.maint()
        ok = True
        self._ready = False
        if self._serf is not None:
            ok = self._serf_step("setting ready=0", lambda: self._set_tags(
                "agent-check answers maint; tags set"))
            self._wait_drained()
            t0 = fx.clock.now()
            if self._serf_step("serf leave", self._leave):
                log.info("left the serf cluster (%.1f s)", fx.clock.now() - t0)
                fx.clock.sleep(LB_GRACE)
                log.info("waited %.0f s for the load balancer to remove this node", LB_GRACE)
            else:
                ok = False
        else:
            log.info("never joined the cluster: nothing to drain")
        if c.stop_command:
            t0 = fx.clock.now()
            status = fx.run_command(c.stop_command)
            log.info("stop command %r exited %d (%.1f s)", c.stop_command, status,
                     fx.clock.now() - t0)
            ok = ok and status == 0
        return ok

    def _leave(self) -> None:
        assert self._serf is not None
        self._serf.leave()

    def _serf_step(self, what: str, step: Callable[[], None]) -> bool:
        """Run a Serf step; reconnect once if the connection is gone. False on failure."""
        for attempt in (1, 2):
            assert self._serf is not None
            try:
                if self._serf.closed:
                    raise SerfError("connection lost")
                step()
                return True
            except SerfError as e:
                if attempt == 2:
                    log.warning("%s failed: %s", what, e)
                    return False
                self._serf.close()
                try:
                    self._serf = self.fx.connect_serf()
                except SerfError as e2:
                    log.warning("%s failed: %s", what, e2)
                    return False
        return False

    def _wait_drained(self) -> None:
        c, fx = self.config, self.fx
        t0 = fx.clock.now()
        left = fx.connections()
        if left:
            log.info("waiting for %d connection(s) on %s to close (at most %g s)", left,
                     c.where, c.drain_timeout)
        while left and fx.clock.now() - t0 < c.drain_timeout:
            fx.clock.sleep(POLL)
            left = fx.connections()
        if left:
            log.warning("drain timeout: %d connection(s) still open on %s after %.1f s", left,
                        c.where, fx.clock.now() - t0)
        else:
            log.info("drained: no connection left on %s after %.1f s", c.where,
                     fx.clock.now() - t0)

    def _sleep_unless_stopped(self, seconds: float) -> None:
        end = self.fx.clock.now() + seconds
        while not self.stop.is_set():
            remaining = end - self.fx.clock.now()
            if remaining < 0.001:  # not 0: rounding must not leave a sliver to wait for
                return
            self.fx.clock.sleep(min(POLL, remaining))


# --- the real effects ----------------------------------------------------------------------


class RealClock:
    def now(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


def local_host(host: str) -> str:
    """Where to reach a service bound to `host` from this machine (0.0.0.0 -> 127.0.0.1)."""
    ip = ipaddress.ip_address(host)
    if ip.is_unspecified:
        return "::1" if ip.version == 6 else "127.0.0.1"
    return host


def info_answers(host: str, port: int, timeout: float = 1.0) -> bool:
    """True when GET http://HOST:PORT/info answers 200."""
    conn = http.client.HTTPConnection(local_host(host), port, timeout=timeout)
    try:
        conn.request("GET", "/info")
        return conn.getresponse().status == 200
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()


def _same_ip(a: str, b: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    ip = ipaddress.ip_address(a.partition("%")[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip == b


def established(host: str, port: int) -> int:
    """ESTABLISHED TCP connections whose local end is HOST:PORT (any address for 0.0.0.0).

    Only the service port counts: agent-check and Serf connections use other ports.
    """
    want = ipaddress.ip_address(host)
    return sum(
        1 for c in psutil.net_connections(kind="tcp")
        if c.status == psutil.CONN_ESTABLISHED and c.laddr and c.laddr.port == port
        and (want.is_unspecified or _same_ip(c.laddr.ip, want))
    )


def run_shell(command: str) -> int:
    return subprocess.run(["/bin/sh", "-c", command], check=False).returncode


class LinkFiles:
    """The real Links: CBDIR/links.json and CBDIR/links-state.json."""

    def __init__(self, cbdir: Path) -> None:
        self.cbdir = cbdir

    def enabled(self) -> bool:
        return (self.cbdir / L.WANTED_FILE).exists()

    def write_wanted(self, peers: Mapping[str, L.Peer]) -> bool:
        return L.write_wanted(self.cbdir, L.REALM, peers)

    def read_state(self) -> L.LinksReport | None:
        return L.read_state(self.cbdir)


def make_private(socket: Path) -> str | None:
    """chmod 0600 the router's socket when it is open to others (Crossbar cannot set its
    mode, and Twisted makes it 0666; its folder is 0700 already, this is the second lock)."""
    try:
        mode = stat.S_IMODE(socket.stat().st_mode)
        if not mode & 0o077:
            return None
        socket.chmod(0o600)
    except OSError:  # not there (yet): the router has not started
        return None
    return f"router socket {socket} was {mode:04o}: made 0600"


def real_effects(config: NodeConfig, agent: Agent) -> Effects:
    def connect() -> Serf:
        rpc = SerfRPC(*config.serf_rpc, config.serf_auth_key)
        rpc.connect()
        return rpc

    socket = config.cbdir / ROUTER_SOCKET if config.cbdir is not None else None
    return Effects(
        connect_serf=connect,
        agent=agent,
        ready=lambda: info_answers(config.host, config.port),
        connections=lambda: established(config.host, config.port),
        run_command=run_shell,
        clock=RealClock(),
        links=LinkFiles(config.cbdir) if config.cbdir is not None else None,
        private_socket=partial(make_private, socket) if socket else lambda: None,
    )


def _flag(name: str) -> str:
    """How `lbsync node` spells a setting's flag (lbsync.settings.TABLE)."""
    return what(name, "node")


def validate_node_config(config: NodeConfig) -> NodeConfig:
    """Raise LbsyncError naming the first value that cannot work; return the config."""
    if problem := name_problem(config.name):
        raise LbsyncError(f"{_flag('node_name')}: {problem}")
    try:
        ipaddress.ip_address(config.host)
    except ValueError:
        raise LbsyncError(f"{_flag('listen')}: {config.host!r} is not an IP address") from None
    if not 1 <= config.agent_port <= 65535:
        raise LbsyncError(f"{_flag('agent_port')}: {config.agent_port} is outside 1-65535")
    if config.agent_port == config.port:
        raise LbsyncError(f"{_flag('agent_port')}: {config.agent_port} is also the "
                          f"{_flag('listen')} port")
    if config.weight is not None and not 0 <= config.weight <= 256:
        raise LbsyncError(f"{_flag('weight')}: {config.weight} is outside 0-256")
    if config.drain_timeout < 0:
        raise LbsyncError(f"{_flag('drain_timeout')} cannot be negative")
    if not 1 <= config.link_port <= 65535:
        raise LbsyncError(f"{_flag('link_port')}: {config.link_port} is outside 1-65535")
    if config.links_wait < 0:
        raise LbsyncError(f"{_flag('links_wait')} cannot be negative")
    if config.link_port in (config.port, config.agent_port):
        raise LbsyncError(f"{_flag('link_port')}: {config.link_port} is also the "
                          f"{_flag('listen')} or {_flag('agent_port')} port")
    return config
