"""`lbsync up / scale / down`: the whole system on one machine, under supervisord.

Addresses are lbsync.cluster.addresses' plan: the load balancer is 127.N.0.1, edge node i
is 127.N.0.(10+i) running Crossbar, the sidecar's agent-check and the router links. N is 0
unless `--net` says otherwise.

Everything the cluster writes lives in one folder (`--dir`): supervisord.conf, sockets,
haproxy.cfg, the registry, each node's Crossbar folder, logs, the fleet secret of the
router links (`fleet.secret`, 0600), with `--tls` the local CA and the frontend's
certificate (`tls/`: lbsync.cluster.tls), Serf's gossip key and RPC token (`serf.key`,
`serf-rpc.token` and the agents' `serf.json` made of them, all 0600), and `lbsync.env`, which
lets `lbsync status` and `lbsync members` find the cluster with no flags.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
import xmlrpc.client
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from .. import __version__, self_command
from ..edge.crossbar import CrossbarConfigError, router_socket
from ..edge.links import new_secret
from ..files import atomic_write
from ..model import LbsyncError
from ..render import load_template, render_text
from ..serf import keys
from ..serf.agent_cmd import serf_agent_argv
from ..settings import env_of, env_var, flags
from .addresses import (
    AGENT_PORT,
    HTTP_PORT,
    LINK_PORT,
    METRICS_PORT,
    RUNTIME_PORT,
    SERF_PORT,
    SERF_RPC_PORT,
    STATS_PORT,
    TLS_PORT,
    lb_ip,
    member_ip,
)
from .tls import ensure as ensure_tls
from .tls import paths as tls_paths

MAX_NODES = 200
ENV_FILE = "lbsync.env"
STATE_FILE = "cluster.json"


class ClusterError(LbsyncError):
    """The local cluster cannot be started, changed or stopped as asked."""


def default_dir() -> Path:
    """Where `lbsync up` puts the cluster when --dir is not given (and where status looks)."""
    if env := os.environ.get(env_var("cluster_dir")):
        return Path(env)
    if os.geteuid() == 0:
        return Path("/run/lbsync/cluster")
    runtime = os.environ.get("XDG_RUNTIME_DIR") or f"/tmp/lbsync-{os.getuid()}"
    return Path(runtime) / "lbsync-cluster"


@dataclass(frozen=True)
class Node:
    index: int
    name: str
    ip: str
    cbdir: Path
    port: int = HTTP_PORT
    agent_port: int = AGENT_PORT
    link_port: int = LINK_PORT


@dataclass(frozen=True)
class Layout:
    """Every path and address of a cluster folder (pure)."""

    dir: Path
    net: int = 0
    tls: bool = False  # `lbsync up --tls`: https:// and wss:// on TLS_PORT, a local CA

    @property
    def lb_ip(self) -> str:
        return lb_ip(self.net)

    @property
    def tls_dir(self) -> Path:
        """The local CA (ca.pem: what clients trust) and the frontend's site.pem."""
        return self.dir / "tls"

    def tls_names(self) -> list[str]:
        """What the frontend's certificate is valid for."""
        return ["localhost", self.lb_ip] + (["127.0.0.1"] if self.lb_ip != "127.0.0.1" else [])

    def node(self, index: int) -> Node:
        return Node(index, f"node{index}", member_ip(self.net, index),
                    self.dir / f"node{index}" / "cbdir")

    @property
    def fleet_secret(self) -> Path:
        """The secret the nodes' router links authenticate with (lbsync.edge.links)."""
        return self.dir / "fleet.secret"

    @property
    def serf_key(self) -> Path:
        """The gossip key every Serf agent of the cluster encrypts with (`serf keygen`'s
        form), so an agent started by hand cannot join and become a server."""
        return self.dir / "serf.key"

    @property
    def serf_token(self) -> Path:
        """The RPC auth token of every Serf agent: lbsync's commands read it from here."""
        return self.dir / "serf-rpc.token"

    @property
    def serf_config(self) -> Path:
        """The agents' `-config-file`: both secrets, off the command line `ps` shows."""
        return self.dir / "serf.json"

    def keyed(self) -> bool:
        """False for a folder an lbsync before gossip encryption made (no key files)."""
        return self.serf_key.exists() and self.serf_token.exists()

    def serf_auth_key(self) -> str | None:
        """The RPC token to talk to this cluster's agents; None for an old, unkeyed one,
        whose agents want none."""
        if not self.serf_token.exists():
            return None
        return keys.read_key_file(self.serf_token, "the Serf RPC token")

    @property
    def conf(self) -> Path:
        return self.dir / "supervisord.conf"

    @property
    def sock(self) -> Path:
        return self.dir / "supervisord.sock"

    @property
    def lb(self) -> dict[str, str]:
        lb = self.dir / "lb"
        return {"ip": self.lb_ip, "config": str(lb / "haproxy.cfg"),
                "registry": str(lb / "nodes"), "admin_socket": str(lb / "admin.sock"),
                "master_socket": str(lb / "master.sock"),
                "serf_snapshot": str(lb / "serf.snapshot")}

    def lb_env(self, drain_timeout: float) -> dict[str, str]:
        """The load balancer's settings this cluster sets, as the LBSYNC_* variables of
        their rows in lbsync.settings.TABLE; every other setting keeps its default."""
        lb = self.lb
        return env_of({
            "registry_dir": lb["registry"],
            "haproxy_config": lb["config"],
            "runtime_socket": lb["admin_socket"],
            "runtime_tcp": f"{self.lb_ip}:{RUNTIME_PORT}",
            "master_socket": lb["master_socket"],
            "frontend_bind": f"{self.lb_ip}:{HTTP_PORT}",
            "stats_bind": f"{self.lb_ip}:{STATS_PORT}",
            "serf_rpc": f"{self.lb_ip}:{SERF_RPC_PORT}",
            # The file, not the token: supervisord.conf and lbsync.env stay secret-free.
            "serf_auth_key_file": str(self.serf_token),
            "drain_timeout": f"{drain_timeout:g}s",
            "metrics_bind": f"{self.lb_ip}:{METRICS_PORT}",
            **({"tls_cert": str(tls_paths(self.tls_dir).site_pem),
                "tls_bind": f"{self.lb_ip}:{TLS_PORT}"} if self.tls else {}),
        })

    def endpoints(self) -> str:
        ip = self.lb_ip
        return (f"frontend  http://{ip}:{HTTP_PORT}/info   (WAMP: ws://{ip}:{HTTP_PORT}/ws)\n"
                f"stats     http://{ip}:{STATS_PORT}/\n"
                f"metrics   http://{ip}:{STATS_PORT}/metrics (HAProxy)  "
                f"http://{ip}:{METRICS_PORT}/metrics (lbsync)\n"
                f"runtime   echo \"show servers state\" | nc {ip} {RUNTIME_PORT}\n"
                f"status    lbsync status\n"
                f"logs      {self.dir}/logs/" + (self.tls_endpoints() if self.tls else ""))

    def tls_endpoints(self) -> str:
        ip, tls = self.lb_ip, tls_paths(self.tls_dir)
        return (f"\nhttps     https://{ip}:{TLS_PORT}/info   (WAMP: wss://{ip}:{TLS_PORT}/ws)\n"
                f"CA        {tls.ca_cert}   (curl --cacert {tls.ca_cert} "
                f"https://{ip}:{TLS_PORT}/info)\n"
                f"cert      {tls.site_pem}   (replace it: lbsync rotates it, no reload)")


def _binary(name: str, apt: str) -> str:
    here = Path(sys.executable).parent / name  # the venv's own (crossbar, supervisord)
    if here.exists():
        return str(here)
    found = shutil.which(name)
    if found is None:
        raise ClusterError(f"{name} not found (install it: {apt})")
    return found


def _commands(layout: Layout, nodes: list[int], proxies: int, drain_timeout: float,
              ) -> dict[str, str]:
    """Every program's command line, shell-quoted for supervisord (which splits it as a
    shell would): the Serf agents from the one builder, lbsync's flags from the settings
    table. Keyed by program name."""
    lbsync = self_command()
    serf = _binary("serf", "apt-get install -y serf")
    crossbar = _binary("crossbar", "pip install 'lbsync[edge]'")
    supervisorctl = _binary("supervisorctl", "pip install 'lbsync[edge]'")
    lb = layout.lb
    lb_serf = f"{layout.lb_ip}:{SERF_PORT}"
    haproxy = [_binary("haproxy", "apt-get install -y haproxy"), "-W", "-S",
               lb["master_socket"], "-f", lb["config"]]
    commands = {
        # The config is rendered (and checked) from the registry before HAProxy starts.
        "haproxy": ["/bin/sh", "-c", f"{shlex.join([*lbsync, 'render'])} && exec "
                    f"{shlex.join(haproxy)}"],
        # The snapshot lets a restarted agent rejoin the members it knew at once.
        "lb-serf": serf_agent_argv(
            "lb", lb_serf, f"{layout.lb_ip}:{SERF_RPC_PORT}", serf=serf, profile="local",
            config_file=layout.serf_config, tags={"role": "lb"}, snapshot=lb["serf_snapshot"],
            rejoin=True),
        "lb-agent": [*lbsync, "agent"],
    }
    for n in (layout.node(i) for i in nodes):
        commands[f"{n.name}-serf"] = serf_agent_argv(
            n.name, f"{n.ip}:{SERF_PORT}", f"{n.ip}:{SERF_RPC_PORT}", serf=serf,
            profile="local", config_file=layout.serf_config, retry_join=lb_serf,
            retry_interval="1s")
        config = [*lbsync, "crossbar-config", *flags(
            "crossbar-config", cbdir=n.cbdir, node_name=n.name, listen=f"{n.ip}:{n.port}",
            proxies=proxies, link_port=n.link_port, link_secret_file=layout.fleet_secret)]
        start = [crossbar, "start", "--cbdir", str(n.cbdir), "--loglevel", "warn"]
        commands[f"{n.name}-crossbar"] = [
            "/bin/sh", "-c", f"{shlex.join(config)} && exec {shlex.join(start)}"]
        stop = [supervisorctl, "-c", str(layout.conf), "stop", f"{n.name}:{n.name}-crossbar"]
        commands[f"{n.name}-sidecar"] = [*lbsync, "node", *flags(
            "node", node_name=n.name, serf_rpc=f"{n.ip}:{SERF_RPC_PORT}",
            serf_auth_key_file=layout.serf_token, listen=f"{n.ip}:{n.port}",
            agent_port=n.agent_port, cbdir=n.cbdir, link_port=n.link_port,
            drain_timeout=f"{int(drain_timeout)}s", stop_command=shlex.join(stop))]
    return {name: shlex.join(argv) for name, argv in commands.items()}


def render_supervisord(layout: Layout, nodes: list[int], proxies: int,
                       drain_timeout: float) -> str:
    label, source = load_template(None, "supervisord.conf.j2")
    env = layout.lb_env(drain_timeout)
    return render_text(label, source, {
        "lbsync_version": __version__,
        "dir": str(layout.dir),
        "lb": layout.lb,
        "serf_config": str(layout.serf_config),
        "lb_env": ",".join(f'{k}="{v}"' for k, v in env.items()),
        "nodes": [layout.node(i) for i in nodes],
        "drain_timeout": int(drain_timeout),
        "commands": _commands(layout, nodes, proxies, drain_timeout),
    })


class Supervisor:
    """supervisord's XML-RPC API on the cluster's unix socket."""

    def __init__(self, layout: Layout) -> None:
        self.layout = layout

    def rpc(self) -> Any:
        from supervisor.xmlrpc import SupervisorTransport

        transport = SupervisorTransport(None, None, f"unix://{self.layout.sock}")
        return xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport)

    def pid(self) -> int | None:
        try:
            pid = int((self.layout.dir / "supervisord.pid").read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if psutil.pid_exists(pid) else None

    def running(self) -> bool:
        if self.pid() is None:
            return False
        try:
            return bool(self.rpc().supervisor.getState()["statename"] == "RUNNING")
        except (OSError, xmlrpc.client.Fault, xmlrpc.client.ProtocolError):
            return False

    def start(self) -> None:
        supervisord = _binary("supervisord", "pip install 'lbsync[edge]'")
        r = subprocess.run([supervisord, "-c", str(self.layout.conf)], capture_output=True,
                           text=True, timeout=30, check=False)
        if r.returncode != 0:
            raise ClusterError(f"supervisord did not start: {(r.stderr or r.stdout).strip()}")
        deadline = time.monotonic() + 15
        while not self.running():
            if time.monotonic() > deadline:
                raise ClusterError(f"supervisord did not answer on {self.layout.sock}")
            time.sleep(0.1)

    def states(self) -> dict[str, str]:
        """'group:name' -> supervisord state name (RUNNING, STOPPED, EXITED, ...)."""
        return {f"{p['group']}:{p['name']}": p["statename"]
                for p in self.rpc().supervisor.getAllProcessInfo()}

    def update(self) -> tuple[list[str], list[str]]:
        """Re-read the config; add new groups, stop and remove gone ones (`supervisorctl
        update`). Returns (added, removed)."""
        api = self.rpc().supervisor
        added, changed, removed = api.reloadConfig()[0]
        for group in removed + changed:
            self.stop_group(group)
            api.removeProcessGroup(group)
        for group in changed + added:
            api.addProcessGroup(group)
        return added + changed, removed

    def stop_group(self, group: str, timeout: float = 60.0) -> None:
        """Stop every process of a group and wait until none runs (whatever state each
        was in: some exit by themselves, like a Serf agent after `leave`)."""
        api = self.rpc().supervisor
        with contextlib.suppress(xmlrpc.client.Fault):
            api.stopProcessGroup(group, False)
        deadline = time.monotonic() + timeout
        busy = {"RUNNING", "STARTING", "STOPPING", "BACKOFF"}
        while any(p["group"] == group and p["statename"] in busy
                  for p in api.getAllProcessInfo()):
            if time.monotonic() > deadline:
                raise ClusterError(f"supervisord could not stop {group} in {timeout:g}s")
            time.sleep(0.1)

    def stop(self, names: list[str]) -> None:
        """Ask supervisord to stop these processes, all at once (no waiting)."""
        api = self.rpc().supervisor
        for name in names:
            with contextlib.suppress(xmlrpc.client.Fault):  # already stopped
                api.stopProcess(name, False)

    def shutdown(self, timeout: float) -> None:
        pid = self.pid()
        if pid is None:
            return
        with contextlib.suppress(OSError, xmlrpc.client.Fault, xmlrpc.client.ProtocolError):
            self.rpc().supervisor.shutdown()
        with contextlib.suppress(psutil.NoSuchProcess):
            psutil.Process(pid).wait(timeout)


def leftovers(layout: Layout) -> list[psutil.Process]:
    """Processes of this cluster still alive: found by the LBSYNC_CLUSTER mark, and
    Crossbar's by their folder, since Crossbar renames its processes (setproctitle), which
    overwrites the environment the mark is in."""
    mark = f"LBSYNC_CLUSTER={layout.dir}"
    inside = str(layout.dir.resolve())
    found = []
    for p in psutil.process_iter(["pid", "name"]):
        with contextlib.suppress(psutil.Error, OSError):  # gone, or not ours to read
            env = Path(f"/proc/{p.pid}/environ").read_bytes().split(b"\0")
            cwd = p.cwd() if p.info["name"].startswith("crossbar-") else ""
            if mark.encode() in env or cwd == inside or cwd.startswith(inside + "/"):
                found.append(p)
    return found


def read_state(layout: Layout) -> dict[str, Any]:
    try:
        data = json.loads((layout.dir / STATE_FILE).read_text())
    except (OSError, ValueError):
        raise ClusterError(f"no cluster in {layout.dir} (start one with `lbsync up`)") from None
    if not isinstance(data, dict):
        raise ClusterError(f"{layout.dir / STATE_FILE} is damaged")
    return data


def write_files(layout: Layout, nodes: list[int], proxies: int, drain_timeout: float) -> None:
    for sub in ("logs", "lb/nodes"):
        (layout.dir / sub).mkdir(parents=True, exist_ok=True)
    for i in nodes:
        layout.node(i).cbdir.mkdir(parents=True, exist_ok=True)
    if not layout.fleet_secret.exists():  # made once: the running nodes hold it
        atomic_write(layout.fleet_secret, new_secret() + "\n", mode=0o600)
    write_serf_secrets(layout)
    if layout.tls:  # before supervisord.conf, whose HAProxy serves it
        ensure_tls(layout.tls_dir, layout.tls_names())
    atomic_write(layout.conf, render_supervisord(layout, nodes, proxies, drain_timeout))
    atomic_write(layout.dir / STATE_FILE, json.dumps(
        {"net": layout.net, "nodes": nodes, "proxies": proxies,
         "drain_timeout": drain_timeout, "tls": layout.tls}, indent=2) + "\n")
    env = layout.lb_env(drain_timeout)
    atomic_write(layout.dir / ENV_FILE, "".join(f"{k}={v}\n" for k, v in env.items()))


def write_serf_secrets(layout: Layout) -> None:
    """Make the gossip key and the RPC token once (running agents hold them: a new key
    would split the cluster), and the agents' config file from them."""
    if not layout.serf_key.exists():
        atomic_write(layout.serf_key, keys.new_gossip_key() + "\n", mode=0o600)
    if not layout.serf_token.exists():
        atomic_write(layout.serf_token, keys.new_rpc_token() + "\n", mode=0o600)
    key = keys.check_gossip_key(keys.read_key_file(layout.serf_key, "the gossip key"),
                                str(layout.serf_key))
    token = keys.read_key_file(layout.serf_token, "the Serf RPC token")
    atomic_write(layout.serf_config, keys.agent_config(key, token), mode=0o600)


def check_dir(path: Path) -> Path:
    path = path.resolve()
    if any(c.isspace() or c in "\"'%;=," for c in str(path)):
        raise ClusterError(f"--dir {path}: spaces, quotes and %;=, do not survive "
                           "supervisord's config; pick a plain path")
    try:  # the longest node folder: `lbsync crossbar-config` would refuse it later
        router_socket(Layout(path).node(MAX_NODES).cbdir)
    except CrossbarConfigError as e:
        raise ClusterError(f"--dir {path}: {e}") from None
    return path
