"""The `lbsync` command: thin click wrappers that build Settings and call the real work.

A setting's flag, its LBSYNC_* variable (`--registry-dir` <- LBSYNC_REGISTRY_DIR), its
default, type and help are its row in lbsync.settings.TABLE; `@table_options(COMMAND)`
makes the options a command takes from the rows.
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
from click.core import ParameterSource

from . import stop_on_sigterm
from .files import atomic_write
from .model import LbsyncError
from .settings import (
    Setting,
    Settings,
    SettingsError,
    auth_key,
    env_var,
    parse_duration,
    parse_values,
    rows_for,
)

F = TypeVar("F", bound=Callable[..., Any])


def _click_type(row: Setting) -> click.ParamType[Any]:
    """click reads ints, paths and choices itself: a wrongly typed value is its usage error
    (which names the variable when the value came from one)."""
    if row.choices:
        return click.Choice(row.choices, case_sensitive=False)
    if row.kind is Path:
        return click.Path(path_type=Path)
    return click.INT if row.kind is int else click.STRING


def table_options(command: str) -> Callable[[F], F]:
    """The options of the settings table's rows `command` takes (lbsync.settings.TABLE)."""
    def add(f: F) -> F:
        for row in reversed(rows_for(command)):
            if (flag := row.flag_for(command)) is None:
                continue
            f = click.option(flag, row.name, type=_click_type(row), default=row.default,
                             envvar=row.env, show_default=True, show_envvar=True,
                             required=command in row.required and row.default is None,
                             help=row.help)(f)
        return f
    return add


def _sourced_from_env(kw: dict[str, Any]) -> set[str]:
    ctx = click.get_current_context()
    return {name for name in kw if ctx.get_parameter_source(name) is ParameterSource.ENVIRONMENT}


def table_values(command: str, kw: dict[str, Any]) -> dict[str, Any]:
    """Pop `command`'s table options off kw, each parsed as its row says."""
    rows = [row for row in rows_for(command) if row.name in kw or row.flag_for(command) is None]
    from_env = _sourced_from_env(kw)
    raw = {row.name: kw.pop(row.name) for row in rows if row.name in kw}
    for row in rows:  # a row with no flag, only its variable (the fleet secret)
        if row.name not in raw and row.env and row.env in os.environ:
            raw[row.name] = os.environ[row.env]
            from_env.add(row.name)
    values = parse_values(rows, raw, from_env)
    for row in rows:  # click itself asks for those with no default
        if command in row.required and values[row.name] is None:
            raise SettingsError(f"{row.what} is not set (nor {row.env}): `lbsync {command}` "
                                "needs it")
    return values


def build_settings(kw: dict[str, Any]) -> Settings:
    """Settings from a load-balancer command's options (popped off kw)."""
    from_env = _sourced_from_env(kw)
    return Settings.build({row.name: kw.pop(row.name) for row in Settings.rows()
                           if row.name in kw}, from_env)


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
@table_options("lbsync")
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
@table_options("render")
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
@table_options("agent")
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
@table_options("handle")
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


@main.command()
@table_options("members")
def members(**kw: Any) -> None:
    """List the Serf members with their status and tags."""
    from .serf.rpc import SerfRPC

    v = table_values("members", kw)
    host, port = v["serf_rpc"]
    with SerfRPC(host, port, auth_key(v["serf_auth_key"], v["serf_auth_key_file"])) as rpc:
        rows = rpc.members()
    width = max([len(m.name) for m in rows] + [6])
    click.echo(f"{'MEMBER'.ljust(width)}  {'ADDRESS'.ljust(15)}  {'STATUS'.ljust(7)}  TAGS")
    for m in sorted(rows, key=lambda m: m.name):
        tags = ",".join(f"{k}={v}" for k, v in sorted(m.tags.items()))
        click.echo(f"{m.name.ljust(width)}  {m.addr.ljust(15)}  {str(m.status).ljust(7)}  {tags}")


_NET_OPTION = click.option("--net", type=click.IntRange(0, 255), default=0, show_default=True,
                           help="use 127.NET.0.x addresses (0: 127.0.0.1 and 127.0.0.11+)")


def _layout(dir_: Path | None, net: int | None = None, tls: bool = False) -> Any:
    from .cluster.local import Layout, check_dir, default_dir, read_state

    path = check_dir(dir_ or default_dir())
    if net is None:  # an existing cluster knows its own addresses, and whether it has TLS
        state = read_state(Layout(path))
        net, tls = int(state.get("net", 0)), bool(state.get("tls", False))
    return Layout(path, net, tls)


@main.command()
@click.option("--nodes", type=click.IntRange(1, 200), default=3, show_default=True)
@click.option("--proxies", type=click.IntRange(1, 64), default=None,
              help="Crossbar proxy workers per node (default: 2 x CPU cores)")
@click.option("--timeout", default="120s", show_default=True, help="longest wait for UP")
@click.option("--tls", is_flag=True,
              help="also https:// and wss:// on :8443, with a local CA made in DIR/tls")
@table_options("up")
@_NET_OPTION
def up(nodes: int, proxies: int | None, timeout: str, tls: bool, net: int, **kw: Any) -> None:
    """Run HAProxy, Serf, lbsync and N Crossbar edge nodes on this machine (supervisord)."""
    from .cluster.lifecycle import up as run_up

    v = table_values("up", kw)
    if proxies is None:
        from .edge.crossbar import default_proxies

        proxies = default_proxies()
    run_up(_layout(v["cluster_dir"], net, tls), nodes, proxies, v["drain_timeout"],
           parse_duration(timeout, "--timeout"))


@main.command()
@click.argument("nodes", type=int)
@click.option("--timeout", default="120s", show_default=True)
@table_options("scale")
def scale(nodes: int, timeout: str, cluster_dir: Path | None) -> None:
    """Add edge nodes, or drain and remove the last ones, until there are NODES."""
    from .cluster.lifecycle import scale as run_scale

    run_scale(_layout(cluster_dir), nodes, parse_duration(timeout, "--timeout"))


@main.command()
@click.option("--timeout", default="60s", show_default=True)
@table_options("down")
def down(timeout: str, cluster_dir: Path | None) -> None:
    """Stop the local cluster and every process it started."""
    from .cluster.lifecycle import down as run_down
    from .cluster.local import Layout, check_dir, default_dir

    run_down(Layout(check_dir(cluster_dir or default_dir())),
             parse_duration(timeout, "--timeout"))


@main.command()
@table_options("status")
@click.option("--check", is_flag=True, help="exit 1 on any drift between Serf, HAProxy, config, "
              "or a certificate expiring within --cert-expiry-margin days")
def status(check: bool, **kw: Any) -> None:
    """Each member's Serf status, HAProxy server state and presence in haproxy.cfg; with
    --tls-cert, each certificate HAProxy serves (subject, names, notAfter)."""
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
    problems = []
    if drifted := [r.name for r in rows if r.drift]:
        problems.append(f"drift on {len(drifted)} member(s): {', '.join(drifted)}")
    if settings.tls_cert is not None:
        problems += _status_certs(settings)
    if check and problems:
        for problem in problems:
            click.echo(f"lbsync: {problem}", err=True)
        sys.exit(1)


def _status_certs(settings: Settings) -> list[str]:
    """Print the certificates HAProxy serves; `status --check`'s lines for those expiring
    within --cert-expiry-margin days."""
    from datetime import UTC, datetime

    from .haproxy.certs import Certificates
    from .status import cert_rows, format_certs

    certs = Certificates(settings.runtime_socket)
    rows = cert_rows([certs.info(f) for f in certs.files()], datetime.now(UTC),
                     settings.cert_expiry_margin)
    click.echo("")
    click.echo(format_certs(rows, settings.cert_expiry_margin))
    if not rows:
        return [f"HAProxy serves no certificate although --tls-cert is {settings.tls_cert}"]
    return [f"{r.problem} (--cert-expiry-margin {settings.cert_expiry_margin} days)"
            for r in rows if r.expiring]


# --- edge node ---------------------------------------------------------------------------


@main.command("crossbar-config")
@table_options("crossbar-config")
def crossbar_config(**kw: Any) -> None:
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

    listen = kw["listen"]
    v = table_values("crossbar-config", kw)
    cbdir, node, link_port = v["cbdir"], v["node_name"], v["link_port"]
    host, port = v["listen"]
    count = default_proxies() if v["proxies"] is None else v["proxies"]
    check_inputs(node, host, port, count)  # before anything is written
    router_socket(cbdir)
    secret = _link_secret(v["link_secret"], v["link_secret_file"])
    fleet_key = links.fleet_public_key(secret) if secret is not None else None
    text = render_crossbar_config(node, host, port, count,
                                  link_port=link_port if secret is not None else None,
                                  fleet_key=fleet_key)
    prepare_cbdir(cbdir)
    (cbdir / links.STATE_FILE).unlink(missing_ok=True)  # the last router's report
    if secret is not None:
        links.write_key_files(cbdir, secret, node)
        if not (cbdir / links.WANTED_FILE).exists():  # the sidecar fills it in
            links.write_wanted(cbdir, links.REALM, {})
    else:
        (cbdir / links.WANTED_FILE).unlink(missing_ok=True)
    changed = write_crossbar_config(cbdir, text)
    where = (f"router links on {host}:{link_port} (fleet key {fleet_key[:12]}...)"
             if fleet_key else "router links off (no fleet secret)")
    click.echo(f"{cbdir / 'config.json'}: node {node}, {count} proxy workers on {listen}, "
               f"{where}, {'written' if changed else 'unchanged'}")


def _link_secret(text: str | None, path: Path | None) -> bytes | None:
    """The fleet secret itself (LBSYNC_LINK_SECRET), else from --link-secret-file, or None."""
    from .edge.links import read_secret

    if text and text.strip():
        return read_secret(text.strip(), env_var("link_secret"))
    if path is None:
        return None
    try:
        return read_secret(path.read_text(), str(path))
    except OSError as e:
        raise LbsyncError(f"--link-secret-file {path}: {e.strerror}") from None


@main.command()
@table_options("node")
def node(**kw: Any) -> None:
    """Edge-node sidecar: tag this node in Serf, answer agent-check, keep the router links
    to the other edge nodes, drain and leave on SIGTERM."""
    from .edge.agentcheck import AgentCheck
    from .edge.sidecar import NodeConfig, Sidecar, real_effects, validate_node_config

    v = table_values("node", kw)
    host, port = v["listen"]
    config = validate_node_config(NodeConfig(
        name=v["node_name"], serf_rpc=v["serf_rpc"], host=host, port=port,
        agent_port=v["agent_port"], weight=v["weight"], drain_timeout=v["drain_timeout"],
        stop_command=v["stop_command"],
        serf_auth_key=auth_key(v["serf_auth_key"], v["serf_auth_key_file"]), cbdir=v["cbdir"],
        link_port=v["link_port"], links_wait=v["links_wait"]))
    stop = threading.Event()
    # The handler only sets the flag; the sidecar's loop does the draining.
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    effects = real_effects(config, AgentCheck(host, config.agent_port))
    sys.exit(Sidecar(config, effects, stop).run())


@main.command()
@click.option("--cbdir", "cbdirs", multiple=True, type=click.Path(path_type=Path),
              help="a node's Crossbar folder (again for more; default: LBSYNC_CBDIR, else "
                   "every node of the local cluster)")
@table_options("links")
@click.option("--check", is_flag=True, help="exit 1 when a wanted link is not up")
def links(cbdirs: tuple[Path, ...], cluster_dir: Path | None, check: bool) -> None:
    """Each edge node's router links to the other nodes, and their state."""
    from .edge import links as L

    folders = list(cbdirs)
    if not folders and (env := os.environ.get(env_var("cbdir"))):
        folders = [Path(env)]
    if not folders:
        from .cluster.local import ClusterError, Layout, check_dir, default_dir, read_state

        layout = Layout(check_dir(cluster_dir or default_dir()))
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
@table_options("probe")
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
@table_options("lab collect")
@click.option("--project", default=None, help="the compose project (default: the one running)")
def lab_collect(task: int, step_name: str, dir_: Path, mode: str | None,
                cluster_dir: Path | None, project: str | None) -> None:
    """Collect one step's deliverables from the running stack into DIR/logs/task-N/STEP."""
    from .lab.collect import check_workdir, collect, preflight
    from .lab.spec import load_lab
    from .lab.tracks import find_track

    stop_on_sigterm()  # a stopped collection stops the benchmark it runs, and its stack
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
