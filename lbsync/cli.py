"""The `lbsync` command: thin click wrappers that build Settings and call the real work.

Every flag is also read from an LBSYNC_* variable (`--registry-dir` <- LBSYNC_REGISTRY_DIR);
these names are a contract the images, the local cluster and the labs script against.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from .edge.links import DEFAULT_LINK_PORT, REALM
from .files import atomic_write
from .model import LbsyncError
from .settings import Settings, SettingsError, parse_cidrs, parse_duration, parse_hostport

F = TypeVar("F", bound=Callable[..., Any])

# (flag, Settings field, click type, help). Defaults come from Settings itself.
_D = Settings()
_OPTIONS: list[tuple[str, str, Any, str]] = [
    ("--registry-dir", "registry_dir", click.Path(path_type=Path), "member registry folder"),
    ("--haproxy-config", "haproxy_config", click.Path(path_type=Path), "haproxy.cfg to keep"),
    ("--template", "template", click.Path(path_type=Path), "haproxy.cfg Jinja2 template"),
    ("--role", "role", str, "Serf tag role=ROLE marks a member as a server"),
    ("--backend", "backend", str, "HAProxy backend lbsync manages"),
    ("--default-port", "default_port", int, "service port when a member has no port tag"),
    ("--default-weight", "default_weight", int, "weight when a member has no weight tag"),
    ("--allow-cidr", "allow_cidr", str, "comma-separated networks members may use (default all)"),
    ("--runtime-socket", "runtime_socket", str, "Runtime API: unix socket PATH or HOST:PORT"),
    ("--runtime-tcp", "runtime_tcp", str, "TCP Runtime API socket rendered in haproxy.cfg "
     "('' = none)"),
    ("--runtime-tcp-level", "runtime_tcp_level", str,
     "the TCP socket's level: user (read only), operator, admin (a lab adding servers by "
     "hand)"),
    ("--master-socket", "master_socket", str, "HAProxy master CLI socket (haproxy -W -S)"),
    ("--frontend-bind", "frontend_bind", str, "HTTP frontend bind address"),
    ("--stats-bind", "stats_bind", str, "stats page bind address"),
    ("--cookie-name", "cookie_name", str, "sticky-session cookie name"),
    ("--cookie-key", "cookie_key", str, "dynamic-cookie-key shared by all load balancers (<3.0)"),
    ("--check-path", "check_path", str, "health check URL path"),
    ("--check-inter", "check_inter", str, "health check interval (e.g. 1s, 500ms)"),
    ("--check-fall", "check_fall", int, "failed checks before DOWN"),
    ("--check-rise", "check_rise", int, "passed checks before UP"),
    ("--drain-timeout", "drain_timeout", str, "longest wait for a leaving server's sessions"),
    ("--failed-grace", "failed_grace", str,
     "a failed member's server is drained at once; its sessions are cut no sooner than this"),
    ("--failed-timeout", "failed_timeout", str,
     "a failed member whose health check still passes keeps its sessions this long"),
    ("--resync-interval", "resync_interval", str, "full resync and reconcile period"),
    ("--poll-interval", "poll_interval", str, "Serf members poll period"),
    ("--reload-min-interval", "reload_min_interval", str, "least time between two reloads"),
    ("--haproxy-bin", "haproxy_bin", str, "haproxy binary"),
    ("--serf-rpc", "serf_rpc", str, "Serf agent RPC address HOST:PORT ('' = registry only)"),
    ("--serf-auth-key", "serf_auth_key", str, "Serf RPC auth key"),
    ("--serf-auth-key-file", "serf_auth_key_file", click.Path(path_type=Path),
     "file holding the Serf RPC auth key (used when --serf-auth-key is not given)"),
    ("--metrics-bind", "metrics_bind", str,
     "agent: serve Prometheus metrics on HOST:PORT/metrics ('' = off)"),
]
_DURATIONS = {"check_inter", "drain_timeout", "failed_grace", "failed_timeout",
              "resync_interval", "poll_interval", "reload_min_interval"}


def _envvar(flag: str) -> str:
    return "LBSYNC_" + flag.lstrip("-").replace("-", "_").upper()


def _default(field: str) -> Any:
    value = getattr(_D, field)
    if field == "serf_rpc":
        return ""
    if field == "allow_cidr":
        return ""
    if field in _DURATIONS:
        return f"{value:g}s"
    return value


def settings_options(f: F) -> F:
    for flag, field, kind, help_ in reversed(_OPTIONS):
        f = click.option(flag, field, type=kind, default=_default(field), envvar=_envvar(flag),
                         show_default=True, show_envvar=True, help=help_)(f)
    return f


def build_settings(kw: dict[str, Any]) -> Settings:
    values: dict[str, Any] = {}
    for flag, field, _kind, _help in _OPTIONS:
        value = kw.pop(field)
        if field in _DURATIONS:
            value = parse_duration(value, flag)
        elif field == "allow_cidr":
            value = parse_cidrs(value)
        elif field == "serf_rpc":
            value = parse_hostport(value, flag) if value else None
        elif field == "serf_auth_key":
            value = value or None
        values[field] = value
    values["serf_auth_key"] = auth_key(values["serf_auth_key"], values["serf_auth_key_file"])
    return Settings(**values).check()


def auth_key(key: str | None, key_file: Path | None) -> str | None:
    """The Serf RPC token: given itself, else read from its file (which keeps it out of
    supervisord.conf, compose files and `ps`), else None (an agent without rpc_auth)."""
    from .serf.keys import read_key_file

    if key:
        return key
    if key_file is not None:
        return read_key_file(key_file, "--serf-auth-key-file")
    return None


def _fail(message: str) -> None:
    click.echo(f"lbsync: error: {message}", err=True)
    sys.exit(1)


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s.%(msecs)03d %(levelname)s %(name)s: %(message)s",
        datefmt="%Y-%m-%dT%H:%M:%S", stream=sys.stderr,
    )
    logging.Formatter.converter = time.gmtime


class _Group(click.Group):
    """Turn LbsyncError anywhere below into one line and exit 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except LbsyncError as e:
            _fail(str(e))


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--log-level", default="info", envvar="LBSYNC_LOG_LEVEL", show_default=True,
              type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False))
@click.version_option(package_name="lbsync")
@click.pass_context
def main(ctx: click.Context, log_level: str) -> None:
    """Keep HAProxy in step with a Serf gossip cluster, without reloads."""
    _setup_logging(log_level)
    if ctx.invoked_subcommand in ("status", "members"):
        _cluster_defaults()


def _cluster_defaults() -> None:
    """Let `lbsync status` / `members` find a running local cluster with no flags: its
    lbsync.env (written by `lbsync up`, removed by `lbsync down`) fills in every LBSYNC_*
    variable the user has not set."""
    from .cluster.local import ENV_FILE, default_dir

    try:
        lines = (default_dir() / ENV_FILE).read_text().splitlines()
    except OSError:
        return
    for line in lines:
        key, sep, value = line.partition("=")
        if sep and key.startswith("LBSYNC_"):
            os.environ.setdefault(key, value)


@main.command()
@settings_options
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="where to write (default: --haproxy-config)")
def render(out: Path | None, **kw: Any) -> None:
    """Render haproxy.cfg from the registry and validate it (no running HAProxy needed)."""
    from .desired import desired_state
    from .haproxy.binary import check_haproxy_config, haproxy_version
    from .registry import Registry
    from .render import ConfigPipeline

    settings = build_settings(kw)
    target = out or settings.haproxy_config
    version = haproxy_version(settings.haproxy_bin)
    desired = desired_state(Registry(settings.registry_dir).load(), settings, version)
    for r in desired.refused:
        logging.getLogger("lbsync.render").warning("refused member=%r: %s", r.member, r.reason)
    pipeline = ConfigPipeline(
        settings, lambda p: check_haproxy_config(p, settings.haproxy_bin), target)
    text = pipeline.render(list(desired.servers.values()), desired.explicit_cookies)
    _prepare_dirs(settings)
    changed = pipeline.install(text, check_unchanged=True)  # as before: always validated
    click.echo(f"{target}: {len(desired.servers)} servers, "
               f"{'written' if changed else 'unchanged'} (haproxy {'.'.join(map(str, version))})")


def _prepare_dirs(settings: Settings) -> None:
    """Folders HAProxy needs before it starts: socket folders and the state file's."""
    for path in (settings.runtime_socket, settings.master_socket, str(settings.state_file)):
        if path.startswith("/"):
            Path(path).parent.mkdir(parents=True, exist_ok=True)
    if not settings.state_file.exists():
        # An empty state file makes HAProxy warn; "1" is the format version with no server.
        atomic_write(settings.state_file, "1\n")


@main.command()
@settings_options
def agent(**kw: Any) -> None:
    """The daemon: follow Serf and the registry, keep HAProxy and haproxy.cfg in step."""
    from .daemon import run_daemon
    from .haproxy.binary import find_binary
    from .metrics import Metrics, MetricsServer

    settings = build_settings(kw)
    find_binary(settings.haproxy_bin)  # before anything is written
    metrics = Metrics()
    server = None
    if settings.metrics_bind:  # bound now, served by the agent: a port in use fails here
        server = MetricsServer(settings.metrics_bind, metrics.registry)
    _prepare_dirs(settings)
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        logging.getLogger("lbsync.daemon").info("signal %s: stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    run_daemon(settings, stop, metrics, server)


@main.command()
@click.option("--registry-dir", type=click.Path(path_type=Path), default=_D.registry_dir,
              envvar="LBSYNC_REGISTRY_DIR", show_default=True, show_envvar=True)
def handle(registry_dir: Path) -> None:
    """Serf event handler: reads SERF_EVENT and member lines on stdin, updates the registry."""
    from .registry import Registry
    from .serf.handler import parse_handler_input

    event_name = os.environ.get("SERF_EVENT", "")
    if not event_name:
        _fail("SERF_EVENT is not set: run me as `serf agent -event-handler 'lbsync handle ...'`")
    try:
        event, refused = parse_handler_input(event_name, sys.stdin.read(), time.time())
    except ValueError as e:
        _fail(str(e))
        return
    changed: list[str] = []
    if event is not None:
        registry_dir.mkdir(parents=True, exist_ok=True)
        changed, more = Registry(registry_dir).apply_event(event)
        refused += more
    for r in refused:
        click.echo(f"lbsync: refused member {r.member!r}: {r.reason}", err=True)
    click.echo(f"{event_name}: {len(changed)} registry entries changed", err=True)
    if refused:
        sys.exit(1)


_AUTH_KEY_FILE = click.option(
    "--serf-auth-key-file", type=click.Path(path_type=Path), default=None,
    envvar="LBSYNC_SERF_AUTH_KEY_FILE", show_envvar=True,
    help="file holding the Serf RPC auth key (used when --serf-auth-key is not given)")


@main.command()
@click.option("--serf-rpc", default="127.0.0.1:7373", envvar="LBSYNC_SERF_RPC",
              show_default=True, show_envvar=True)
@click.option("--serf-auth-key", default="", envvar="LBSYNC_SERF_AUTH_KEY", show_envvar=True)
@_AUTH_KEY_FILE
def members(serf_rpc: str, serf_auth_key: str, serf_auth_key_file: Path | None) -> None:
    """List the Serf members with their status and tags."""
    from .serf.rpc import SerfRPC

    host, port = parse_hostport(serf_rpc, "--serf-rpc")
    with SerfRPC(host, port, auth_key(serf_auth_key, serf_auth_key_file)) as rpc:
        rows = rpc.members()
    width = max([len(m.name) for m in rows] + [6])
    click.echo(f"{'MEMBER'.ljust(width)}  {'ADDRESS'.ljust(15)}  {'STATUS'.ljust(7)}  TAGS")
    for m in sorted(rows, key=lambda m: m.name):
        tags = ",".join(f"{k}={v}" for k, v in sorted(m.tags.items()))
        click.echo(f"{m.name.ljust(width)}  {m.addr.ljust(15)}  {str(m.status).ljust(7)}  {tags}")


_DIR_OPTION = click.option(
    "--dir", "dir_", type=click.Path(path_type=Path), default=None, envvar="LBSYNC_CLUSTER_DIR",
    show_envvar=True, help="cluster folder (default: /run/lbsync/cluster as root)")
_NET_OPTION = click.option("--net", type=click.IntRange(0, 255), default=0, show_default=True,
                           help="use 127.NET.0.x addresses (0: 127.0.0.1 and 127.0.0.11+)")


def _layout(dir_: Path | None, net: int | None = None) -> Any:
    from .cluster.local import Layout, check_dir, default_dir, read_state

    path = check_dir(dir_ or default_dir())
    if net is None:  # an existing cluster knows its own addresses
        net = int(read_state(Layout(path)).get("net", 0))
    return Layout(path, net)


@main.command()
@click.option("--nodes", type=click.IntRange(1, 200), default=3, show_default=True)
@click.option("--proxies", type=click.IntRange(1, 64), default=None,
              help="Crossbar proxy workers per node (default: 2 x CPU cores)")
@click.option("--drain-timeout", default="10s", show_default=True, envvar="LBSYNC_DRAIN_TIMEOUT")
@click.option("--timeout", default="120s", show_default=True, help="longest wait for UP")
@_DIR_OPTION
@_NET_OPTION
def up(nodes: int, proxies: int | None, drain_timeout: str, timeout: str, dir_: Path | None,
       net: int) -> None:
    """Run HAProxy, Serf, lbsync and N Crossbar edge nodes on this machine (supervisord)."""
    from .cluster.lifecycle import up as run_up

    if proxies is None:
        from .edge.crossbar import default_proxies

        proxies = default_proxies()
    run_up(_layout(dir_, net), nodes, proxies, parse_duration(drain_timeout, "--drain-timeout"),
           parse_duration(timeout, "--timeout"))


@main.command()
@click.argument("nodes", type=int)
@click.option("--timeout", default="120s", show_default=True)
@_DIR_OPTION
def scale(nodes: int, timeout: str, dir_: Path | None) -> None:
    """Add edge nodes, or drain and remove the last ones, until there are NODES."""
    from .cluster.lifecycle import scale as run_scale

    run_scale(_layout(dir_), nodes, parse_duration(timeout, "--timeout"))


@main.command()
@click.option("--timeout", default="60s", show_default=True)
@_DIR_OPTION
def down(timeout: str, dir_: Path | None) -> None:
    """Stop the local cluster and every process it started."""
    from .cluster.lifecycle import down as run_down
    from .cluster.local import Layout, check_dir, default_dir

    run_down(Layout(check_dir(dir_ or default_dir())), parse_duration(timeout, "--timeout"))


@main.command()
@settings_options
@click.option("--check", is_flag=True, help="exit 1 on any drift between Serf, HAProxy, config")
def status(check: bool, **kw: Any) -> None:
    """Each member's Serf status, HAProxy server state and presence in haproxy.cfg."""
    from .haproxy.runtime import RuntimeAPI
    from .registry import Registry
    from .serf.rpc import SerfRPC
    from .status import config_servers, format_table, status_rows

    settings = build_settings(kw)
    if settings.serf_rpc:
        with SerfRPC(*settings.serf_rpc, settings.serf_auth_key) as rpc:
            members_ = {m.name: m for m in rpc.members()}
    else:
        members_ = Registry(settings.registry_dir).load()
    runtime = RuntimeAPI(settings.runtime_socket)
    actual = runtime.servers_state(settings.backend)
    version = runtime.version()
    try:
        text = settings.haproxy_config.read_text(encoding="utf-8")
    except OSError as e:
        raise SettingsError(
            f"--haproxy-config: cannot read {settings.haproxy_config} ({e})") from None
    rows = status_rows(members_, actual, config_servers(text), settings, version)
    click.echo(format_table(rows))
    drifted = [r.name for r in rows if r.drift]
    if check and drifted:
        click.echo(f"lbsync: drift on {len(drifted)} member(s): {', '.join(drifted)}", err=True)
        sys.exit(1)


# --- edge node ---------------------------------------------------------------------------


@main.command("crossbar-config")
@click.option("--cbdir", type=click.Path(path_type=Path), required=True,
              envvar="LBSYNC_CBDIR", show_envvar=True, help="Crossbar node folder")
@click.option("--node", required=True, envvar="LBSYNC_NODE_NAME", show_envvar=True,
              help="node name: Crossbar's node id, and what /mydata and the WELCOME say")
@click.option("--listen", required=True, envvar="LBSYNC_LISTEN", show_envvar=True,
              help="IP:PORT the proxy workers share (WebSocket /ws, /info, /mydata)")
@click.option("--proxies", type=int, default=None, envvar="LBSYNC_PROXIES", show_envvar=True,
              help="proxy workers  [default: 2 x logical CPUs]")
@click.option("--link-port", type=int, default=DEFAULT_LINK_PORT, envvar="LBSYNC_LINK_PORT",
              show_default=True, show_envvar=True,
              help="port (on the --listen address) where the other edge nodes' router links "
                   "connect")
@click.option("--link-secret-file", type=click.Path(path_type=Path), default=None,
              envvar="LBSYNC_LINK_SECRET_FILE", show_envvar=True,
              help="file holding the fleet secret (base64, e.g. the Serf gossip key); turns "
                   "the router links on. LBSYNC_LINK_SECRET may hold the secret itself")
def crossbar_config(cbdir: Path, node: str, listen: str, proxies: int | None, link_port: int,
                    link_secret_file: Path | None) -> None:
    """Write CBDIR/config.json: a router worker and N proxy workers on one shared port.

    The proxies reach the router over the unix socket CBDIR/run/router.sock (CBDIR/run is
    made private to this user). With a fleet secret, the router also links to every other
    edge node's router (one realm across the fleet): it takes their links on --link-port,
    keeps its own to the peers the sidecar lists in CBDIR/links.json, and the node's
    Crossbar key (CBDIR/key.priv) becomes the fleet key derived from the secret.
    """
    from .edge import links
    from .edge.crossbar import (
        check_inputs,
        default_proxies,
        prepare_cbdir,
        render_crossbar_config,
        router_socket,
        write_crossbar_config,
    )

    host, port = parse_hostport(listen, "--listen")
    count = default_proxies() if proxies is None else proxies
    check_inputs(node, host, port, count)  # before anything is written
    router_socket(cbdir)
    secret = _link_secret(link_secret_file)
    fleet_key = links.fleet_public_key(secret) if secret is not None else None
    text = render_crossbar_config(node, host, port, count,
                                  link_port=link_port if secret is not None else None,
                                  fleet_key=fleet_key)
    prepare_cbdir(cbdir)
    (cbdir / links.STATE_FILE).unlink(missing_ok=True)  # the last router's report
    if secret is not None:
        links.write_key_files(cbdir, secret, node)
        if not (cbdir / links.WANTED_FILE).exists():  # the sidecar fills it in
            links.write_wanted(cbdir, REALM, {})
    else:
        (cbdir / links.WANTED_FILE).unlink(missing_ok=True)
    changed = write_crossbar_config(cbdir, text)
    where = (f"router links on {host}:{link_port} (fleet key {fleet_key[:12]}...)"
             if fleet_key else "router links off (no fleet secret)")
    click.echo(f"{cbdir / 'config.json'}: node {node}, {count} proxy workers on {listen}, "
               f"{where}, {'written' if changed else 'unchanged'}")


def _link_secret(path: Path | None) -> bytes | None:
    """The fleet secret from LBSYNC_LINK_SECRET or --link-secret-file, or None."""
    from .edge.links import read_secret

    if text := os.environ.get("LBSYNC_LINK_SECRET", "").strip():
        return read_secret(text, "LBSYNC_LINK_SECRET")
    if path is None:
        return None
    try:
        return read_secret(path.read_text(), str(path))
    except OSError as e:
        raise LbsyncError(f"--link-secret-file {path}: {e.strerror}") from None


@main.command()
@click.option("--name", required=True, envvar="LBSYNC_NODE_NAME", show_envvar=True,
              help="this node's name (its Serf node name)")
@click.option("--serf-rpc", default="127.0.0.1:7373", envvar="LBSYNC_SERF_RPC",
              show_default=True, show_envvar=True, help="the local Serf agent's RPC address")
@click.option("--listen", required=True, envvar="LBSYNC_LISTEN", show_envvar=True,
              help="IP:PORT Crossbar serves on (the port HAProxy sends traffic to)")
@click.option("--agent-port", type=int, required=True, envvar="LBSYNC_AGENT_PORT",
              show_envvar=True, help="HAProxy agent-check port, on the --listen IP")
@click.option("--weight", type=int, default=None, envvar="LBSYNC_WEIGHT", show_envvar=True,
              help="HAProxy weight tag (0-256)")
@click.option("--drain-timeout", default="30s", envvar="LBSYNC_DRAIN_TIMEOUT",
              show_default=True, show_envvar=True,
              help="longest wait for connections to close before leaving")
@click.option("--stop-command", default="", envvar="LBSYNC_STOP_COMMAND", show_envvar=True,
              help="/bin/sh command run last, e.g. supervisorctl stop NODE-crossbar")
@click.option("--serf-auth-key", default="", envvar="LBSYNC_SERF_AUTH_KEY", show_envvar=True)
@_AUTH_KEY_FILE
@click.option("--cbdir", type=click.Path(path_type=Path), default=None, envvar="LBSYNC_CBDIR",
              show_envvar=True,
              help="the node's Crossbar folder: keep its router links to the other edge nodes "
                   "(when `lbsync crossbar-config` turned them on)")
@click.option("--link-port", type=int, default=DEFAULT_LINK_PORT, envvar="LBSYNC_LINK_PORT",
              show_default=True, show_envvar=True,
              help="the router's link port, as `lbsync crossbar-config` was given it")
@click.option("--links-wait", default="30s", envvar="LBSYNC_LINKS_WAIT", show_default=True,
              show_envvar=True,
              help="longest wait of the first ready=1 for the router links to the serving "
                   "nodes")
def node(name: str, serf_rpc: str, listen: str, agent_port: int, weight: int | None,
         drain_timeout: str, stop_command: str, serf_auth_key: str,
         serf_auth_key_file: Path | None, cbdir: Path | None, link_port: int,
         links_wait: str) -> None:
    """Edge-node sidecar: tag this node in Serf, answer agent-check, keep the router links
    to the other edge nodes, drain and leave on SIGTERM."""
    from .edge.agentcheck import AgentCheck
    from .edge.sidecar import NodeConfig, Sidecar, real_effects, validate_node_config

    host, port = parse_hostport(listen, "--listen")
    config = validate_node_config(NodeConfig(
        name=name, serf_rpc=parse_hostport(serf_rpc, "--serf-rpc"), host=host, port=port,
        agent_port=agent_port, weight=weight,
        drain_timeout=parse_duration(drain_timeout, "--drain-timeout"),
        stop_command=stop_command, serf_auth_key=auth_key(serf_auth_key, serf_auth_key_file),
        cbdir=cbdir,
        link_port=link_port, links_wait=parse_duration(links_wait, "--links-wait")))
    stop = threading.Event()
    # The handler only sets the flag; the sidecar's loop does the draining.
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    effects = real_effects(config, AgentCheck(host, agent_port))
    sys.exit(Sidecar(config, effects, stop).run())


@main.command()
@click.option("--cbdir", "cbdirs", multiple=True, type=click.Path(path_type=Path),
              help="a node's Crossbar folder (again for more; default: LBSYNC_CBDIR, else "
                   "every node of the local cluster)")
@_DIR_OPTION
@click.option("--check", is_flag=True, help="exit 1 when a wanted link is not up")
def links(cbdirs: tuple[Path, ...], dir_: Path | None, check: bool) -> None:
    """Each edge node's router links to the other nodes, and their state."""
    from .edge import links as L

    folders = list(cbdirs)
    if not folders and (env := os.environ.get("LBSYNC_CBDIR")):
        folders = [Path(env)]
    if not folders:
        from .cluster.local import ClusterError, Layout, check_dir, default_dir, read_state

        layout = Layout(check_dir(dir_ or default_dir()))
        try:
            state = read_state(layout)
        except ClusterError:
            raise LbsyncError(
                f"no --cbdir, no LBSYNC_CBDIR and no local cluster in {layout.dir}: run it "
                "on an edge node (docker exec NODE lbsync links), or name a node's Crossbar "
                "folder with --cbdir") from None
        layout = Layout(layout.dir, int(state.get("net", 0)))
        folders = [layout.node(i).cbdir for i in state.get("nodes", [])]
    down = 0
    now = time.time()
    for cbdir in folders:
        wanted = L.read_wanted(cbdir)
        if wanted is None:
            click.echo(f"{cbdir}: router links off")
            continue
        report = L.read_state(cbdir)
        down += len(set(wanted) - L.linked(report, wanted))
        router = f"router pid {report.pid}" if report is not None else "no running router"
        click.echo(f"{cbdir}: {L.links_tag(report, wanted)} links up ({router})")
        for line in L.describe(report, wanted, now):
            click.echo(f"  {line}")
    if check and down:
        click.echo(f"lbsync: {down} wanted link(s) not up", err=True)
        sys.exit(1)


@main.command("probe")
@click.argument("urls", nargs=-1, required=True, metavar="URL...")
@click.option("--realm", default="realm1", show_default=True, envvar="LBSYNC_REALM",
              show_envvar=True)
@click.option("--timeout", default="10s", show_default=True, help="for all steps together")
def probe_(urls: tuple[str, ...], realm: str, timeout: str) -> None:
    """WAMP round trip to URL (ws://HOST:PORT/ws): join, call, publish; print the node.

    With several URLs (the same one again counts: through HAProxy, sessions open at once
    land on different nodes), every session also calls a procedure registered by each of
    the others and receives each one's events exactly once: the fleet is one realm.
    """
    from .edge.probe import probe, probe_across

    seconds = parse_duration(timeout, "--timeout")
    if len(urls) == 1:
        click.echo(probe(urls[0], realm, seconds).line())
        return
    result = probe_across(list(urls), realm, seconds)
    for line in result.lines():
        click.echo(line)
    if not result.ok:
        sys.exit(1)


@main.command("bench", context_settings={"ignore_unknown_options": True,
                                         "allow_extra_args": True, "help_option_names": []})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def bench_(args: tuple[str, ...]) -> None:
    """Run the benchmark suite: lbsync bench [--quick] --out FILE (`lbsync bench --help`).

    It is `python -m bench.run` of a source checkout (bench/ is not in the wheel); every
    argument goes to it. --quick takes about 5 minutes.
    """
    from . import BENCH_RUN, bench_command

    if not BENCH_RUN.is_file():
        _fail(f"lbsync bench needs a source checkout: {BENCH_RUN} is missing (bench/ is not "
              "installed with the package; clone the repository and `pip install -e "
              "'.[edge,bench]'`)")
    argv, env = bench_command(*args)
    os.execve(argv[0], argv, env)


# --- the classroom lab -------------------------------------------------------------------


@main.group("lab", cls=_Group)
def lab() -> None:
    """The classroom lab: a student's folder, its deliverables, and whether it is complete."""


_LAB_DIR = click.option("--dir", "dir_", type=click.Path(path_type=Path), default=Path("."),
                        show_default=True, help="the lab folder (made by `lbsync lab init`)")


@lab.command("init")
@click.argument("dir_", metavar="DIR", type=click.Path(path_type=Path))
def lab_init(dir_: Path) -> None:
    """Make a student's lab folder: report.md, logs/, work/haproxy.cfg.j2."""
    from .lab.collect import init
    from .lab.spec import lab_file
    from .render import load_template

    _, template = load_template(None)
    for path in init(dir_, template, lab_file("report/TEMPLATE.md")):
        click.echo(f"wrote {path}")
    click.echo(f"lab folder ready: cd {dir_}; the tasks are in labs/tasks/ "
               "(lbsync lab collect TASK --step NAME after each step)")


@lab.command("collect")
@click.argument("task", type=int)
@click.option("--step", "step_name", required=True, help="the step's name (see the task page)")
@_LAB_DIR
@click.option("--mode", type=click.Choice(["docker", "local"]), default=None,
              help="which stack to collect from (default: the one that runs)")
@click.option("--cluster-dir", type=click.Path(path_type=Path), default=None,
              envvar="LBSYNC_CLUSTER_DIR", show_envvar=True,
              help="the local cluster's folder (default: lbsync up's)")
@click.option("--project", default=None, help="the compose project (default: the one running)")
def lab_collect(task: int, step_name: str, dir_: Path, mode: str | None,
                cluster_dir: Path | None, project: str | None) -> None:
    """Collect one step's deliverables from the running stack into DIR/logs/task-N/STEP."""
    from .lab.collect import check_workdir, collect, preflight
    from .lab.spec import load_lab
    from .lab.tracks import find_track

    spec = load_lab()
    step = spec.task(task).step(step_name)
    workdir = check_workdir(dir_)
    preflight(step, workdir)
    collect(spec, step, workdir, find_track(mode, cluster_dir, project))


@lab.command("check")
@click.argument("dirs", nargs=-1, type=click.Path(path_type=Path))
@click.option("--task", "task_id", type=int, default=None, help="only this task")
@click.option("--json", "as_json_", is_flag=True, help="machine-readable output")
def lab_check(dirs: tuple[Path, ...], task_id: int | None, as_json_: bool) -> None:
    """Is each lab folder a complete report? Exit 0 only when every one is."""
    from .lab.check import as_json, check_folder, format_problems
    from .lab.collect import check_workdir
    from .lab.spec import load_lab

    spec = load_lab()
    if task_id is not None:
        spec.task(task_id)  # an unknown task is an error, not an empty report
    results = {}
    for d in dirs or (Path("."),):
        results[d] = check_folder(check_workdir(d), spec, task_id)
    if as_json_:
        click.echo(as_json(results), nl=False)
    else:
        for d, problems in results.items():
            click.echo(format_problems(d, problems), nl=False)
        if len(results) > 1:
            done = sum(1 for p in results.values() if not p)
            click.echo(f"{done} of {len(results)} folders complete")
    if any(results.values()):
        sys.exit(1)


@lab.command("pages")
@click.option("--labs", "labs_dir", type=click.Path(path_type=Path, file_okay=False),
              default=Path("labs"), show_default=True, help="the labs/ folder of a checkout")
@click.option("--check", "check_only", is_flag=True, help="exit 1 if a page is out of date")
def lab_pages(labs_dir: Path, check_only: bool) -> None:
    """Remake the task pages' deliverables tables and the report template from lab.toml."""
    from .lab.pages import expected_pages
    from .lab.spec import load_lab

    stale = []
    for path, text in expected_pages(load_lab(labs_dir / "lab.toml"), labs_dir).items():
        current = path.read_text(encoding="utf-8") if path.exists() else None
        if current != text:
            stale.append(path)
            if not check_only:
                atomic_write(path, text)
                click.echo(f"wrote {path}")
    if check_only and stale:
        _fail(f"out of date with lab.toml: {', '.join(map(str, stale))} (lbsync lab pages)")


@lab.command("sessions")
@click.option("--url", default="ws://127.0.0.1:8080/ws", show_default=True)
@click.option("--realm", default="realm1", show_default=True)
@click.option("--count", type=click.IntRange(1, 200), default=6, show_default=True)
@click.option("--for", "for_", default="40s", show_default=True, help="how long to hold them")
def lab_sessions(url: str, realm: str, count: int, for_: str) -> None:
    """Hold WAMP sessions through HAProxy; say which the fleet closed and where they went."""
    from .lab.sessions import hold_sessions

    hold_sessions(url, realm, count, parse_duration(for_, "--for"))
