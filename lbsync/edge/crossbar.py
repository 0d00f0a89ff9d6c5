"""The Crossbar.io node configuration of an edge node: one router, N proxy workers.

Rendering is pure (templates/crossbar.json.j2 + values, checked with json.loads). The
only effects are the private folder of the router's unix socket (CBDIR/run, mode 0700)
and the atomic write of CBDIR/config.json.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import stat
from pathlib import Path

import psutil

from .. import __version__
from ..files import atomic_write
from ..model import LbsyncError
from ..render import load_template, render_text
from ..settings import env_var, what
from ..validate import name_problem
from .links import LINK_PATH, LINK_ROLE

TEMPLATE = "crossbar.json.j2"
# Crossbar's rule for every configuration item ID, the controller (node) id included.
_CROSSBAR_ID = re.compile(r"[a-z][a-z0-9_]{2,63}", re.ASCII)
# Autobahn's rule for realm names (_URI_PAT_REALM_NAME), without '@'.
_REALM = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{2,254}", re.ASCII)
MAX_PROXIES = 256
# The router's socket for its proxy workers, relative to CBDIR: Crossbar joins a unix
# endpoint's path to the node directory (the listening and the connecting side alike), so
# the config does not name CBDIR. Only the node's user may enter its folder (see
# prepare_cbdir): Crossbar cannot set a socket's mode, and Twisted makes it 0666 (the
# sidecar, `lbsync node --cbdir`, makes it 0600 once it appears).
SOCKET_DIR = "run"
ROUTER_SOCKET = f"{SOCKET_DIR}/router.sock"
# sockaddr_un.sun_path is 108 bytes on Linux, the terminating NUL included.
MAX_UNIX_PATH = 107


class CrossbarConfigError(LbsyncError):
    """A value cannot go into a Crossbar config, or the node folder cannot hold it."""


def node_problem(node: str) -> str | None:
    """Why `node` cannot name a Crossbar node (lbsync's rule and Crossbar's), or None."""
    if problem := name_problem(node):
        return problem
    if not _CROSSBAR_ID.fullmatch(node):
        return (f"node name {node!r}: Crossbar node ids are 3-64 characters from [a-z0-9_] "
                "starting with a letter")
    return None


def default_proxies() -> int:
    """Twice the logical CPUs: Crossbar's advice for a node's proxy (web) workers."""
    return 2 * (psutil.cpu_count(logical=True) or 1)


CMD = "crossbar-config"


def _flag(name: str) -> str:
    """How `lbsync crossbar-config` spells a setting's flag (lbsync.settings.TABLE)."""
    return what(name, CMD)


def _ip(host: str, what: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        raise CrossbarConfigError(f"{what}: {host!r} is not an IP address") from None


def _check_port(port: int, what: str) -> None:
    if not 1 <= port <= 65535:
        raise CrossbarConfigError(f"{what}: port {port} is outside 1-65535")


def check_inputs(node: str, host: str, port: int, proxies: int,
                 realm: str = "realm1") -> None:
    """Raise CrossbarConfigError naming the first value Crossbar could not use."""
    if problem := node_problem(node):
        raise CrossbarConfigError(f"{_flag('node_name')}: {problem}")
    _ip(host, _flag("listen"))
    _check_port(port, _flag("listen"))
    if not 1 <= proxies <= MAX_PROXIES:
        raise CrossbarConfigError(f"{_flag('proxies')}: {proxies} is outside 1-{MAX_PROXIES}")
    if not _REALM.fullmatch(realm):
        raise CrossbarConfigError(f"realm {realm!r} is not a WAMP realm name")


def router_socket(cbdir: Path) -> str:
    """The absolute path Crossbar binds and connects for CBDIR's router socket.

    Crossbar makes CBDIR absolute against the cwd of `crossbar start` and joins the
    socket's relative path to it; so does this. Raises CrossbarConfigError when the path is
    too long for AF_UNIX (the router worker would fail to start, far from the cause).
    """
    path = os.path.join(os.path.abspath(cbdir), ROUTER_SOCKET)
    size = len(os.fsencode(path))
    if size > MAX_UNIX_PATH:
        raise CrossbarConfigError(
            f"{_flag('cbdir')}: the router socket {path} would be {size} bytes long, over the "
            f"{MAX_UNIX_PATH}-byte limit of AF_UNIX socket paths: use a shorter "
            f"{_flag('cbdir')}")
    return path


def _endpoint(host: str, port: int) -> dict[str, object]:
    ip = _ip(host, _flag("listen"))
    return {"type": "tcp", "interface": str(ip), "port": port,
            **({"version": 6} if ip.version == 6 else {})}


def render_crossbar_config(node: str, host: str, port: int, proxies: int,
                           realm: str = "realm1", link_port: int | None = None,
                           fleet_key: str | None = None) -> str:
    """CBDIR/config.json for an edge node, as text.

    With `link_port` and `fleet_key` (the fleet's public key, hex), the router also takes
    the other edge nodes' links on HOST:LINK_PORT and keeps its own (lbsync.edge.links).
    """
    check_inputs(node, host, port, proxies, realm)
    links = None
    if link_port is not None:
        _check_port(link_port, _flag("link_port"))
        if link_port == port:
            raise CrossbarConfigError(f"{_flag('link_port')}: {link_port} is also the "
                                      f"{_flag('listen')} port")
        if fleet_key is None or not re.fullmatch(r"[0-9a-f]{64}", fleet_key):
            raise CrossbarConfigError("the router links need the fleet key "
                                      f"({_flag('link_secret_file')} or "
                                      f"{env_var('link_secret')})")
        links = {"endpoint": _endpoint(host, link_port), "path": LINK_PATH, "role": LINK_ROLE,
                 "pubkey": fleet_key}
    label, source = load_template(None, TEMPLATE)
    text = render_text(label, source, {
        "links": links,
        "node": node,
        "realm": realm,
        "proxies": proxies,
        "router_socket": {"type": "unix", "path": ROUTER_SOCKET},
        # Every proxy worker binds the same socket; the kernel spreads connections.
        "listen": {**_endpoint(host, port), "shared": True, "backlog": 1024},
        "mydata": {"node": node, "realm": realm, "lbsync": __version__},
    })
    try:
        json.loads(text)
    except json.JSONDecodeError as e:
        raise CrossbarConfigError(f"template {label} rendered invalid JSON: {e}") from None
    return text


def prepare_cbdir(cbdir: Path) -> None:
    """Make CBDIR and its private socket folder CBDIR/run (mode 0700, re-set every time).

    Whoever can connect to the router's socket can join the realm as any role (the proxy
    workers' anonymous-proxy login), so only the node's user may reach it.
    """
    run = cbdir / SOCKET_DIR
    try:
        cbdir.mkdir(parents=True, exist_ok=True)
        run.mkdir(mode=0o700, exist_ok=True)
        st = os.lstat(run)
        if not stat.S_ISDIR(st.st_mode):
            raise CrossbarConfigError(f"{run} is not a folder")
        if st.st_uid != os.geteuid():
            raise CrossbarConfigError(f"{run} belongs to uid {st.st_uid}, not to this user")
        if stat.S_IMODE(st.st_mode) != 0o700:
            os.chmod(run, 0o700)
    except OSError as e:
        raise CrossbarConfigError(f"cannot prepare {run}: {e}") from None


def write_crossbar_config(cbdir: Path, text: str) -> bool:
    """Atomically replace CBDIR/config.json; False when it already held `text`."""
    return atomic_write(cbdir / "config.json", text)
