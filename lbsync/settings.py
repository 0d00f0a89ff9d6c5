"""Settings: one frozen value built from flags and LBSYNC_* variables, checked once.

Everything that shapes haproxy.cfg lives here, so `structure_key()` (what forces a
reload) is derived from settings and the template alone, never from membership.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from pathlib import Path

from .model import LbsyncError
from .validate import name_problem

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_HOSTPORT = re.compile(
    r"(?:(?P<host>\*|[A-Za-z0-9.-]+|\[[0-9A-Fa-f:]+\]))?:(?P<port>[0-9]{1,5})", re.ASCII)
_DURATION = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m)?", re.ASCII)


RUNTIME_LEVELS = ("user", "operator", "admin")


class SettingsError(LbsyncError):
    """A flag or LBSYNC_* variable has a value lbsync cannot use."""


def parse_hostport(value: str, what: str, *, host_required: bool = True) -> tuple[str, int]:
    """`HOST:PORT` (HOST may be `*` for a bind) -> (host, port), or a SettingsError."""
    m = _HOSTPORT.fullmatch(value.strip())
    if not m or (host_required and not m.group("host")):
        raise SettingsError(f"{what}: {value!r} is not HOST:PORT")
    port = int(m.group("port"))
    if not 1 <= port <= 65535:
        raise SettingsError(f"{what}: port {port} is outside 1-65535")
    return (m.group("host") or "*").strip("[]"), port


def parse_duration(value: str, what: str) -> float:
    """`500ms`, `2s`, `1m` or a plain number of seconds -> seconds."""
    m = _DURATION.fullmatch(value.strip())
    if not m:
        raise SettingsError(f"{what}: {value!r} is not a duration (e.g. 500ms, 2s, 1m)")
    number, unit = float(m.group(1)), m.group(2) or "s"
    return number * {"ms": 0.001, "s": 1.0, "m": 60.0}[unit]


def parse_cidrs(value: str) -> tuple[IPNetwork, ...]:
    """A comma-separated list of networks; empty means allow all."""
    nets: list[IPNetwork] = []
    for part in filter(None, (p.strip() for p in value.split(","))):
        try:
            nets.append(ipaddress.ip_network(part, strict=False))
        except ValueError as e:
            raise SettingsError(f"--allow-cidr: {part!r} is not a network ({e})") from None
    return tuple(nets)


def is_unix_socket(address: str) -> bool:
    return address.startswith("/") or address.startswith("unix@")


@dataclass(frozen=True)
class Settings:
    registry_dir: Path = Path("/nodes")
    haproxy_config: Path = Path("/etc/haproxy/haproxy.cfg")
    template: Path | None = None  # None: the haproxy.cfg.j2 shipped in the wheel
    role: str = "edge"
    backend: str = "nodes"
    default_port: int = 8080
    default_weight: int = 100
    allow_cidr: tuple[IPNetwork, ...] = ()
    # Where lbsync talks to HAProxy; a path is also rendered as the admin unix socket.
    runtime_socket: str = "/run/lbsync/haproxy.sock"
    # Rendered as a TCP socket for people (`echo "show servers state" | nc ...`); "" turns
    # it off. Read-only by default: anyone on the machine can reach a TCP port, while the
    # unix socket lbsync itself uses is 0600.
    runtime_tcp: str = "127.0.0.1:9999"
    runtime_tcp_level: str = "user"  # HAProxy's levels: user (read only), operator, admin
    master_socket: str = "/run/lbsync/master.sock"
    frontend_bind: str = "*:8080"
    stats_bind: str = "127.0.0.1:1936"
    cookie_name: str = "SERVERID"
    # Shared by every load balancer on 2.6-2.9 so they all hand out the same cookies.
    cookie_key: str = "lbsync"
    check_path: str = "/info"
    check_inter: float = 1.0
    check_fall: int = 2
    check_rise: int = 1
    retries: int = 3
    maxconn: int = 4096
    drain_timeout: float = 30.0
    # Serf can call a leaving member failed for a moment before its leave intent arrives:
    # a failed member's server leaves rotation at once, its sessions are cut only after this.
    failed_grace: float = 2.0
    # Serf's word alone does not cut sessions: past the grace, a failed member's sessions
    # are cut once HAProxy's own check says DOWN too, or after this whatever the check says
    # (gossip lost while the member still serves).
    failed_timeout: float = 60.0
    resync_interval: float = 10.0
    poll_interval: float = 0.1
    reload_min_interval: float = 5.0
    haproxy_bin: str = "haproxy"
    serf_rpc: tuple[str, int] | None = None
    serf_auth_key: str | None = field(default=None, repr=False)
    serf_auth_key_file: Path | None = None  # cli reads it into serf_auth_key
    # The agent's own Prometheus endpoint (/metrics); "" serves none. Not structure.
    metrics_bind: str = ""

    @property
    def state_file(self) -> Path:
        """HAProxy's server-state file lives beside the config it belongs to."""
        return self.haproxy_config.with_name(self.haproxy_config.stem + ".state")

    def check(self) -> Settings:
        """Raise SettingsError naming the first value that cannot work; return self."""
        for what, name in (("--backend", self.backend), ("--cookie-name", self.cookie_name)):
            if problem := name_problem(name):
                raise SettingsError(f"{what}: {problem}")
        if not re.fullmatch(r"[A-Za-z0-9_.-]{1,63}", self.role):
            raise SettingsError(f"--role: {self.role!r} has characters outside [A-Za-z0-9_.-]")
        if not 1 <= self.default_port <= 65535:
            raise SettingsError(f"--default-port: {self.default_port} is outside 1-65535")
        if not 0 <= self.default_weight <= 256:
            raise SettingsError(f"--default-weight: {self.default_weight} is outside 0-256")
        if not re.fullmatch(r"/[A-Za-z0-9_./?=&%-]*", self.check_path):
            raise SettingsError(f"--check-path: {self.check_path!r} is not a plain URL path")
        if not re.fullmatch(r"[A-Za-z0-9_.:+/=-]{1,128}", self.cookie_key):
            raise SettingsError("--cookie-key: use 1-128 characters from [A-Za-z0-9_.:+/=-]")
        for what, value in (("--check-fall", self.check_fall), ("--check-rise", self.check_rise),
                            ("--retries", self.retries), ("--maxconn", self.maxconn)):
            if value < 1:
                raise SettingsError(f"{what}: {value} must be at least 1")
        for what, seconds in (("--check-inter", self.check_inter),
                              ("--resync-interval", self.resync_interval),
                              ("--poll-interval", self.poll_interval)):
            if seconds <= 0:
                raise SettingsError(f"{what}: must be more than 0")
        for what, seconds in (("--drain-timeout", self.drain_timeout),
                              ("--failed-grace", self.failed_grace),
                              ("--failed-timeout", self.failed_timeout),
                              ("--reload-min-interval", self.reload_min_interval)):
            if seconds < 0:
                raise SettingsError(f"{what}: cannot be negative")
        parse_hostport(self.frontend_bind, "--frontend-bind", host_required=False)
        parse_hostport(self.stats_bind, "--stats-bind", host_required=False)
        if self.runtime_tcp:
            parse_hostport(self.runtime_tcp, "--runtime-tcp")
        if self.runtime_tcp_level not in RUNTIME_LEVELS:
            raise SettingsError(f"--runtime-tcp-level {self.runtime_tcp_level!r}: one of "
                                f"{', '.join(RUNTIME_LEVELS)}")
        if (self.runtime_tcp and self.runtime_socket == self.runtime_tcp
                and self.runtime_tcp_level != "admin"):
            raise SettingsError(f"--runtime-socket {self.runtime_socket} is the --runtime-tcp "
                                "socket: lbsync changes servers through it, so it needs "
                                "--runtime-tcp-level admin")
        if self.metrics_bind:
            parse_hostport(self.metrics_bind, "--metrics-bind", host_required=False)
        if not is_unix_socket(self.runtime_socket):
            parse_hostport(self.runtime_socket, "--runtime-socket")
        for what, path in (("--runtime-socket", self.runtime_socket),
                           ("--master-socket", self.master_socket),
                           ("--haproxy-config", str(self.haproxy_config))):
            if any(c.isspace() or c in "\"'#;" for c in path):
                raise SettingsError(f"{what}: {path!r} has spaces, quotes, '#' or ';'")
        return self
