"""THE settings table, and Settings: one frozen value built from it, checked once.

Every setting is one row of `TABLE`: its name, its flag, its LBSYNC_* variable, its
default, how its text is read, its help and the commands that take it. The CLI makes its
options from the rows (`lbsync.cli`), `Settings` takes its defaults from them, the local
cluster names the variables it writes through them, and a unit test holds the images and
the compose files to them. The variable names are a contract the images, the local
cluster and the labs script against.

Everything that shapes haproxy.cfg lives in Settings, so `structure_key()` (what forces a
reload) is derived from settings and the template alone, never from membership.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from .edge.links import DEFAULT_LINK_PORT, REALM
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


def parse_cidrs(value: str, what: str = "--allow-cidr") -> tuple[IPNetwork, ...]:
    """A comma-separated list of networks; empty means allow all."""
    nets: list[IPNetwork] = []
    for part in filter(None, (p.strip() for p in value.split(","))):
        try:
            nets.append(ipaddress.ip_network(part, strict=False))
        except ValueError as e:
            raise SettingsError(f"{what}: {part!r} is not a network ({e})") from None
    return tuple(nets)


def is_unix_socket(address: str) -> bool:
    return address.startswith("/") or address.startswith("unix@")


def _hostport_or_none(value: str, what: str) -> tuple[str, int] | None:
    return parse_hostport(value, what) if value else None


def _or_none(value: str, _what: str) -> str | None:
    return value or None


SWITCH = {"on": True, "off": False, "true": True, "false": False, "yes": True, "no": False,
          "1": True, "0": False}


def parse_switch(value: str, what: str) -> bool:
    """on/off (true/false, yes/no, 1/0) -> bool."""
    try:
        return SWITCH[value.strip().lower()]
    except KeyError:
        raise SettingsError(f"{what}: {value!r} is not on or off") from None


def _abs_path_or_none(value: str, _what: str) -> Path | None:
    """A path made absolute but not resolved: HAProxy names a certificate by the path its
    `crt` was given, and a symlink (a mounted secret's) must stay the name lbsync uses."""
    return Path(os.path.abspath(value)) if value else None


# --- the table ---------------------------------------------------------------------------

# The commands that build Settings (the load balancer's side).
LB = frozenset({"agent", "render", "status"})
# `lbsync up` and `scale`/`down` and `links` find the local cluster by the same folder.
CLUSTER = frozenset({"up", "scale", "down", "links", "lab collect"})
EDGE = frozenset({"node", "crossbar-config"})


@dataclass(frozen=True)
class Setting:
    """One row of the table. `default` is text, as a flag or an LBSYNC_* variable spells
    it (None: no default); `kind` is what click reads the text as (str, int, Path) and
    `convert` turns it into the value lbsync uses, raising SettingsError."""

    name: str  # the Settings field, and the parameter of the commands that take it
    default: str | None
    help: str
    commands: frozenset[str]
    kind: type = str
    convert: Callable[[str, str], Any] | None = None
    flag: str | None = ""  # "": --NAME-WITH-DASHES; None: not a flag
    env: str | None = ""  # "": LBSYNC_ + the flag; None: no variable
    required: frozenset[str] = frozenset()  # the commands that cannot run without it
    flags: tuple[tuple[str, str], ...] = ()  # (command, flag): a command's older spelling
    choices: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.flag == "":
            object.__setattr__(self, "flag", "--" + self.name.replace("_", "-"))
        if self.env == "":
            stem = (self.flag or self.name).lstrip("-").replace("-", "_").upper()
            object.__setattr__(self, "env", f"LBSYNC_{stem}")

    def flag_for(self, command: str) -> str | None:
        return dict(self.flags).get(command, self.flag)

    @property
    def what(self) -> str:
        """How messages name it: its flag, else its name."""
        return self.flag or self.name

    def parse(self, raw: Any, what: str | None = None) -> Any:
        """Text (or what click made of it) -> the value lbsync uses; SettingsError if not."""
        what = what or self.what
        if raw is None:
            return None
        if isinstance(raw, str) and self.kind is not str:
            try:
                raw = self.kind(raw)
            except ValueError:
                raise SettingsError(f"{what}: {raw!r} is not {self.kind.__name__}") from None
        if self.choices and str(raw).lower() not in self.choices:
            raise SettingsError(f"{what}: {raw!r} is not one of {', '.join(self.choices)}")
        return self.convert(raw, what) if self.convert else raw

    @property
    def value(self) -> Any:
        """The default as lbsync uses it."""
        return self.parse(self.default)


def _row(name: str, default: str | None, help_: str, commands: Collection[str] = LB,
         **more: Any) -> Setting:
    return Setting(name, default, help_, frozenset(commands), **more)


def _duration(name: str, default: str, help_: str, commands: Collection[str] = LB) -> Setting:
    return _row(name, default, help_, commands, convert=parse_duration)


TABLE: tuple[Setting, ...] = (
    _row("log_level", "info", "log level", {"lbsync"},
         choices=("debug", "info", "warning", "error")),
    # The load balancer: lbsync agent, render, status.
    _row("registry_dir", "/nodes", "member registry folder", LB | {"handle"}, kind=Path),
    _row("haproxy_config", "/etc/haproxy/haproxy.cfg", "haproxy.cfg to keep", kind=Path),
    _row("template", None, "haproxy.cfg Jinja2 template (default: the one lbsync ships)",
         kind=Path),
    _row("role", "edge", "Serf tag role=ROLE marks a member as a server"),
    _row("backend", "nodes", "HAProxy backend lbsync manages"),
    _row("default_port", "8080", "service port when a member has no port tag", kind=int),
    _row("default_weight", "100", "weight when a member has no weight tag", kind=int),
    _row("allow_cidr", "", "comma-separated networks members may use (default all)",
         convert=parse_cidrs),
    _row("runtime_socket", "/run/lbsync/haproxy.sock",
         "Runtime API: unix socket PATH or HOST:PORT"),
    # Read-only by default: anyone on the machine can reach a TCP port, while the unix
    # socket lbsync itself uses is 0600.
    _row("runtime_tcp", "127.0.0.1:9999",
         "TCP Runtime API socket rendered in haproxy.cfg ('' = none)"),
    _row("runtime_tcp_level", "user",
         "the TCP socket's level: user (read only), operator, admin (a lab adding servers by "
         "hand)"),
    _row("master_socket", "/run/lbsync/master.sock",
         "HAProxy master CLI socket (haproxy -W -S)"),
    _row("frontend_bind", "*:8080", "HTTP frontend bind address"),
    _row("stats_bind", "127.0.0.1:1936", "stats page bind address"),
    # TLS at the edge: off unless a certificate is given. Its file is rotated through the
    # Runtime API when it changes (no reload); a folder is SNI, one certificate per file.
    _row("tls_cert", "", "PEM file (certificate + key) or folder of them (SNI) the frontend "
         "serves https:// and wss:// with ('' = no TLS); rotated without reload when it "
         "changes", convert=_abs_path_or_none),
    _row("tls_bind", "*:8443", "HTTPS frontend bind address (with --tls-cert)"),
    _row("tls_redirect", "off", "on: redirect plain HTTP to HTTPS (301), and the sticky "
         "cookie is Secure", convert=parse_switch),
    _row("hsts", "0", "Strict-Transport-Security max-age in seconds on HTTPS responses "
         "(0 = none)", kind=int),
    _row("cert_expiry_margin", "14", "`status --check` fails when a served certificate "
         "expires within this many days", kind=int),
    _row("cookie_name", "SERVERID", "sticky-session cookie name"),
    # Shared by every load balancer on 2.6-2.9 so they all hand out the same cookies.
    _row("cookie_key", "lbsync", "dynamic-cookie-key shared by all load balancers (<3.0)"),
    _row("check_path", "/info", "health check URL path"),
    _duration("check_inter", "1s", "health check interval (e.g. 1s, 500ms)"),
    # A joiner is added DOWN and comes UP on its first passing check, which HAProxy runs
    # one downinter after the add. So this bounds join latency, and it is how often a
    # server that stays DOWN is checked (bench/check_cost.py: UP 102/52/22 ms after the
    # add at 100/50/20 ms; 200 DOWN servers cost HAProxy 6.8/12.1/26.0 % of a core).
    _duration("check_downinter", "50ms", "health check interval of a DOWN server (at most "
              "--check-inter): a joining server's first check comes this long after its add"),
    _row("check_fall", "2", "failed checks before DOWN", kind=int),
    _row("check_rise", "1", "passed checks before UP", kind=int),
    # Template values no flag sets (yet): a row all the same, so there is one default.
    _row("retries", "3", "HAProxy retries", (), kind=int, flag=None, env=None),
    _row("maxconn", "4096", "HAProxy global maxconn", (), kind=int, flag=None, env=None),
    # One value for both ends of a leave, as compose and `lbsync up` always set it: the
    # node waits this long for its connections before `serf leave`, the load balancer as
    # long for the server's sessions before `del server`. 10 s, the value every image,
    # compose file and `lbsync up` ran with (only a bare `agent`/`node` had 30 s).
    _duration("drain_timeout", "10s",
              "longest wait for a leaving node's sessions: the node waits before `serf "
              "leave`, the load balancer before it deletes the server", LB | {"node", "up"}),
    # Serf can call a leaving member failed for a moment before its leave intent arrives:
    # a failed member's server leaves rotation at once, its sessions are cut only after this.
    _duration("failed_grace", "2s",
              "a failed member's server is drained at once; its sessions are cut no sooner "
              "than this"),
    # Serf's word alone does not cut sessions: past the grace, a failed member's sessions
    # are cut once HAProxy's own check says DOWN too, or after this whatever the check says
    # (gossip lost while the member still serves).
    _duration("failed_timeout", "60s",
              "a failed member whose health check still passes keeps its sessions this long"),
    _duration("resync_interval", "10s", "full resync and reconcile period"),
    _duration("poll_interval", "0.1s", "Serf members poll period"),
    _duration("reload_min_interval", "5s", "least time between two reloads"),
    _row("haproxy_bin", "haproxy", "haproxy binary"),
    # Off unless given: `lbsync agent` then follows the registry `lbsync handle` keeps;
    # `members` and `node` need it. The images and the local cluster set it.
    _row("serf_rpc", "", "the Serf agent's RPC address HOST:PORT ('' = none: agent and "
         "status read the registry alone; members and node need it)", LB | {"members", "node"},
         convert=_hostport_or_none, required=frozenset({"members", "node"})),
    _row("serf_auth_key", "", "Serf RPC auth key", LB | {"members", "node"}, convert=_or_none),
    _row("serf_auth_key_file", None,
         "file holding the Serf RPC auth key (used when --serf-auth-key is not given)",
         LB | {"members", "node"}, kind=Path),
    # The agent's own Prometheus endpoint (/metrics); not structure.
    _row("metrics_bind", "", "agent: serve Prometheus metrics on HOST:PORT/metrics ('' = off)"),
    # The edge node: lbsync crossbar-config and lbsync node.
    _row("node_name", None,
         "this node's name: its Serf node name, Crossbar's node id, what /mydata and the "
         "WELCOME say", EDGE, flag="--name", env="LBSYNC_NODE_NAME", required=EDGE,
         flags=(("crossbar-config", "--node"),)),
    _row("listen", None,
         "IP:PORT the node's Crossbar proxy workers share (WebSocket /ws, /info, /mydata): "
         "the port HAProxy sends traffic to", EDGE, convert=parse_hostport, required=EDGE),
    _row("cbdir", None,
         "the node's Crossbar folder (`node`: keep its router links to the other edge "
         "nodes, when `lbsync crossbar-config` turned them on)", EDGE, kind=Path,
         required=frozenset({"crossbar-config"})),
    _row("proxies", None, "proxy workers  [default: 2 x logical CPUs]", {"crossbar-config"},
         kind=int),
    _row("link_port", str(DEFAULT_LINK_PORT),
         "port (on the --listen address) where the other edge nodes' router links connect",
         EDGE, kind=int),
    _row("link_secret_file", None,
         "file holding the fleet secret (base64, e.g. the Serf gossip key); turns the "
         "router links on. LBSYNC_LINK_SECRET may hold the secret itself",
         {"crossbar-config"}, kind=Path),
    _row("link_secret", None, "the fleet secret itself (wins over --link-secret-file)",
         {"crossbar-config"}, flag=None, env="LBSYNC_LINK_SECRET"),
    _row("agent_port", None, "HAProxy agent-check port, on the --listen IP", {"node"},
         kind=int, required=frozenset({"node"})),
    _row("weight", None, "HAProxy weight tag (0-256)", {"node"}, kind=int),
    _row("stop_command", "", "/bin/sh command run last, e.g. supervisorctl stop "
         "NODE-crossbar", {"node"}),
    _duration("links_wait", "30s",
              "longest wait of the first ready=1 for the router links to the serving nodes",
              {"node"}),
    # Around the fleet.
    _row("realm", REALM, "the WAMP realm", {"probe"}),
    _row("cluster_dir", None,
         "the local cluster's folder (default: /run/lbsync/cluster as root, else "
         "$XDG_RUNTIME_DIR/lbsync-cluster)", CLUSTER, kind=Path, flag="--dir",
         env="LBSYNC_CLUSTER_DIR",
         flags=(("lab collect", "--cluster-dir"),)),
)
BY_NAME: dict[str, Setting] = {row.name: row for row in TABLE}
BY_ENV: dict[str, Setting] = {row.env: row for row in TABLE if row.env}


def rows_for(command: str) -> list[Setting]:
    """The rows a command takes, in table order."""
    return [row for row in TABLE if command in row.commands]


def default(name: str) -> Any:
    """A setting's default, as lbsync uses it."""
    return BY_NAME[name].value


def env_var(name: str) -> str:
    """The LBSYNC_* variable of a setting."""
    env = BY_NAME[name].env
    assert env is not None, name
    return env


def env_of(values: Mapping[str, str]) -> dict[str, str]:
    """{setting: text} -> {LBSYNC_* variable: text}, for a process lbsync starts."""
    return {env_var(name): text for name, text in values.items()}


def flags(command: str, /, **values: object) -> list[str]:
    """{setting: value} -> the flags COMMAND takes for them, in the order given, for a
    command line lbsync (or a test) writes: `flags("node", node_name="n1")` is
    ["--name", "n1"]. A name the table has no flag of for COMMAND is a SettingsError;
    a None value is left out."""
    argv: list[str] = []
    for name, value in values.items():
        row = BY_NAME.get(name)
        flag = row.flag_for(command) if row is not None and command in row.commands else None
        if flag is None:
            raise SettingsError(f"lbsync {command} has no flag for the setting {name!r}")
        if value is not None:
            argv += [flag, str(value)]
    return argv


def _blame(error: LbsyncError, from_env: Collection[str]) -> LbsyncError:
    """Name the LBSYNC_* variable when the bad value came from it: messages start with the
    setting's flag (`--check-inter: ...`), which is what a variable's reader cannot see."""
    message = str(error)
    for name in from_env:
        row = BY_NAME[name]
        if message.startswith((f"{row.what}:", f"{row.what} ")):
            return type(error)(f"{message} (set by {row.env})")
    return error


def parse_values(rows: Iterable[Setting], raw: Mapping[str, Any],
                 from_env: Collection[str] = ()) -> dict[str, Any]:
    """{name: text or what click made of it} -> {name: value}, for each row."""
    values: dict[str, Any] = {}
    try:
        for row in rows:
            values[row.name] = row.parse(raw.get(row.name, row.default))
    except SettingsError as e:
        raise _blame(e, from_env) from None
    return values


def auth_key(key: str | None, key_file: Path | None) -> str | None:
    """The Serf RPC token: given itself, else read from its file (which keeps it out of
    supervisord.conf, compose files and `ps`), else None (an agent without rpc_auth)."""
    from .serf.keys import read_key_file

    if key:
        return key
    if key_file is not None:
        return read_key_file(key_file, BY_NAME["serf_auth_key_file"].what)
    return None


def what(name: str, command: str | None = None) -> str:
    """How messages name a setting: its flag (COMMAND's spelling when given), else its name."""
    row = BY_NAME[name]
    return (row.flag_for(command) or row.name) if command else row.what


# --- Settings ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    """The load balancer's settings; every default is the table's."""

    registry_dir: Path = default("registry_dir")
    haproxy_config: Path = default("haproxy_config")
    template: Path | None = default("template")  # None: the haproxy.cfg.j2 in the wheel
    role: str = default("role")
    backend: str = default("backend")
    default_port: int = default("default_port")
    default_weight: int = default("default_weight")
    allow_cidr: tuple[IPNetwork, ...] = default("allow_cidr")
    # Where lbsync talks to HAProxy; a path is also rendered as the admin unix socket.
    runtime_socket: str = default("runtime_socket")
    # Rendered as a TCP socket for people (`echo "show servers state" | nc ...`).
    runtime_tcp: str = default("runtime_tcp")
    runtime_tcp_level: str = default("runtime_tcp_level")  # user, operator, admin
    master_socket: str = default("master_socket")
    frontend_bind: str = default("frontend_bind")
    stats_bind: str = default("stats_bind")
    tls_cert: Path | None = default("tls_cert")  # None: no TLS
    tls_bind: str = default("tls_bind")
    tls_redirect: bool = default("tls_redirect")
    hsts: int = default("hsts")
    cert_expiry_margin: int = default("cert_expiry_margin")
    cookie_name: str = default("cookie_name")
    cookie_key: str = default("cookie_key")
    check_path: str = default("check_path")
    check_inter: float = default("check_inter")
    check_downinter: float = default("check_downinter")
    check_fall: int = default("check_fall")
    check_rise: int = default("check_rise")
    retries: int = default("retries")
    maxconn: int = default("maxconn")
    drain_timeout: float = default("drain_timeout")
    failed_grace: float = default("failed_grace")
    failed_timeout: float = default("failed_timeout")
    resync_interval: float = default("resync_interval")
    poll_interval: float = default("poll_interval")
    reload_min_interval: float = default("reload_min_interval")
    haproxy_bin: str = default("haproxy_bin")
    serf_rpc: tuple[str, int] | None = default("serf_rpc")
    serf_auth_key: str | None = field(default=default("serf_auth_key"), repr=False)
    serf_auth_key_file: Path | None = default("serf_auth_key_file")  # read into serf_auth_key
    metrics_bind: str = default("metrics_bind")

    @classmethod
    def rows(cls) -> list[Setting]:
        return [BY_NAME[f.name] for f in fields(cls)]

    @classmethod
    def build(cls, raw: Mapping[str, Any], from_env: Collection[str] = ()) -> Settings:
        """Settings from the table's text values (a flag's or a variable's), checked; a bad
        value is one SettingsError naming its flag, and its variable when it came from one."""
        values = parse_values(cls.rows(), raw, from_env)
        try:
            values["serf_auth_key"] = auth_key(values["serf_auth_key"],
                                               values["serf_auth_key_file"])
            settings = cls(**values).check()
            settings.cert_files()  # a missing certificate or one with no key fails here
            return settings
        except LbsyncError as e:
            raise _blame(e, from_env) from None

    @property
    def state_file(self) -> Path:
        """HAProxy's server-state file lives beside the config it belongs to."""
        return self.haproxy_config.with_name(self.haproxy_config.stem + ".state")

    def check(self) -> Settings:
        """Raise SettingsError naming the first value that cannot work; return self."""
        for name in ("backend", "cookie_name"):
            if problem := name_problem(getattr(self, name)):
                raise SettingsError(f"{what(name)}: {problem}")
        if not re.fullmatch(r"[A-Za-z0-9_.-]{1,63}", self.role):
            raise SettingsError(f"{what('role')}: {self.role!r} has characters outside "
                                "[A-Za-z0-9_.-]")
        if not 1 <= self.default_port <= 65535:
            raise SettingsError(f"{what('default_port')}: {self.default_port} is outside "
                                "1-65535")
        if not 0 <= self.default_weight <= 256:
            raise SettingsError(f"{what('default_weight')}: {self.default_weight} is outside "
                                "0-256")
        if not re.fullmatch(r"/[A-Za-z0-9_./?=&%-]*", self.check_path):
            raise SettingsError(f"{what('check_path')}: {self.check_path!r} is not a plain "
                                "URL path")
        if not re.fullmatch(r"[A-Za-z0-9_.:+/=-]{1,128}", self.cookie_key):
            raise SettingsError(f"{what('cookie_key')}: use 1-128 characters from "
                                "[A-Za-z0-9_.:+/=-]")
        for name in ("check_fall", "check_rise", "retries", "maxconn"):
            if (value := getattr(self, name)) < 1:
                raise SettingsError(f"{what(name)}: {value} must be at least 1")
        for name in ("check_inter", "check_downinter", "resync_interval", "poll_interval"):
            if getattr(self, name) <= 0:
                raise SettingsError(f"{what(name)}: must be more than 0")
        for name in ("drain_timeout", "failed_grace", "failed_timeout", "reload_min_interval"):
            if getattr(self, name) < 0:
                raise SettingsError(f"{what(name)}: cannot be negative")
        parse_hostport(self.frontend_bind, what("frontend_bind"), host_required=False)
        parse_hostport(self.stats_bind, what("stats_bind"), host_required=False)
        parse_hostport(self.tls_bind, what("tls_bind"), host_required=False)
        for name in ("hsts", "cert_expiry_margin"):
            if getattr(self, name) < 0:
                raise SettingsError(f"{what(name)}: cannot be negative")
        if self.tls_cert is None:
            for name in ("tls_redirect", "hsts"):
                if getattr(self, name):
                    raise SettingsError(f"{what(name)} needs {what('tls_cert')}")
        if self.runtime_tcp:
            parse_hostport(self.runtime_tcp, what("runtime_tcp"))
        if self.runtime_tcp_level not in RUNTIME_LEVELS:
            raise SettingsError(f"{what('runtime_tcp_level')} {self.runtime_tcp_level!r}: one "
                                f"of {', '.join(RUNTIME_LEVELS)}")
        if (self.runtime_tcp and self.runtime_socket == self.runtime_tcp
                and self.runtime_tcp_level != "admin"):
            raise SettingsError(f"{what('runtime_socket')} {self.runtime_socket} is the "
                                f"{what('runtime_tcp')} socket: lbsync changes servers "
                                f"through it, so it needs {what('runtime_tcp_level')} admin")
        if self.metrics_bind:
            parse_hostport(self.metrics_bind, what("metrics_bind"), host_required=False)
        if not is_unix_socket(self.runtime_socket):
            parse_hostport(self.runtime_socket, what("runtime_socket"))
        for name in ("runtime_socket", "master_socket", "haproxy_config", "tls_cert"):
            path = str(getattr(self, name))
            if any(c.isspace() or c in "\"'#;" for c in path):
                raise SettingsError(f"{what(name)}: {path!r} has spaces, quotes, '#' or ';'")
        return self

    def cert_files(self) -> list[Path]:
        """The certificate files the frontend serves (none without --tls-cert), each
        checked to be a PEM with its key: SettingsError naming the file if not."""
        from .haproxy.certs import cert_files

        if self.tls_cert is None:
            return []
        try:
            return cert_files(self.tls_cert)
        except LbsyncError as e:
            raise SettingsError(f"{what('tls_cert')}: {e}") from None
