"""The Crossbar.io node configuration of an edge node: one router, N proxy workers.

Rendering is pure (templates/crossbar.json.j2 + values, checked with json.loads). The
only effects are the node key (Crossbar makes it with `crossbar keys`; its public half
goes into the config, see the template) and the atomic write of CBDIR/config.json.
"""

from __future__ import annotations

import ipaddress
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import psutil

from .. import __version__
from ..files import atomic_write
from ..model import LbsyncError
from ..render import load_template, render_text
from ..validate import name_problem

TEMPLATE = "crossbar.json.j2"
# Crossbar's rule for every configuration item ID, the controller (node) id included.
_CROSSBAR_ID = re.compile(r"[a-z][a-z0-9_]{2,63}", re.ASCII)
# Autobahn's rule for realm names (_URI_PAT_REALM_NAME), without '@'.
_REALM = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{2,254}", re.ASCII)
_PUBKEY = re.compile(r"[0-9a-f]{64}", re.ASCII)
MAX_PROXIES = 256


class CrossbarConfigError(LbsyncError):
    """A value cannot go into a Crossbar config, or the node key cannot be had."""


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


def _ip(host: str, what: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        raise CrossbarConfigError(f"{what}: {host!r} is not an IP address") from None


def _check_port(port: int, what: str) -> None:
    if not 1 <= port <= 65535:
        raise CrossbarConfigError(f"{what}: port {port} is outside 1-65535")


def router_host(host: str) -> str:
    """Where the router listens for its proxies: the node's address only if it is loopback.

    See the template: that port admits any role to anyone who knows the node's public key.
    """
    ip = _ip(host, "--listen")
    if ip.is_loopback:
        return str(ip)
    return "::1" if ip.version == 6 else "127.0.0.1"


def check_inputs(node: str, host: str, port: int, router_port: int, proxies: int,
                 realm: str = "realm1") -> None:
    """Raise CrossbarConfigError naming the first value Crossbar could not use."""
    if problem := node_problem(node):
        raise CrossbarConfigError(f"--node: {problem}")
    _ip(host, "--listen")
    _check_port(port, "--listen")
    _check_port(router_port, "--router-port")
    if router_port == port:
        # Even with the router on 127.0.0.1, a node listening on 0.0.0.0 would collide.
        raise CrossbarConfigError(f"--router-port: {router_port} is also the --listen port")
    if not 1 <= proxies <= MAX_PROXIES:
        raise CrossbarConfigError(f"--proxies: {proxies} is outside 1-{MAX_PROXIES}")
    if not _REALM.fullmatch(realm):
        raise CrossbarConfigError(f"realm {realm!r} is not a WAMP realm name")


def _endpoint(host: str, port: int) -> dict[str, object]:
    ip = _ip(host, "--listen")
    return {"type": "tcp", "interface": str(ip), "port": port,
            **({"version": 6} if ip.version == 6 else {})}


def render_crossbar_config(node: str, host: str, port: int, router_port: int, proxies: int,
                           realm: str = "realm1", *, node_pubkey: str) -> str:
    """CBDIR/config.json for an edge node, as text; `node_pubkey` is key.pub's ed25519 key."""
    check_inputs(node, host, port, router_port, proxies, realm)
    if not _PUBKEY.fullmatch(node_pubkey):
        raise CrossbarConfigError(f"node public key {node_pubkey!r} is not 64 hex digits")
    rhost = router_host(host)
    router_listen = _endpoint(rhost, router_port)
    router_connect = {"type": "tcp", "host": rhost, "port": router_port,
                      **({"version": 6} if ":" in rhost else {})}
    url_host = f"[{rhost}]" if ":" in rhost else rhost
    label, source = load_template(None, TEMPLATE)
    text = render_text(label, source, {
        "node": node,
        "realm": realm,
        "proxies": proxies,
        "node_pubkey": node_pubkey,
        "router_listen": router_listen,
        "router_connect": router_connect,
        "router_url": f"ws://{url_host}:{router_port}",
        # Every proxy worker binds the same socket; the kernel spreads connections.
        "listen": {**_endpoint(host, port), "shared": True, "backlog": 1024},
        "mydata": {"node": node, "realm": realm, "lbsync": __version__},
    })
    try:
        json.loads(text)
    except json.JSONDecodeError as e:
        raise CrossbarConfigError(f"template {label} rendered invalid JSON: {e}") from None
    return text


def write_config(cbdir: Path, text: str) -> bool:
    """Atomically replace CBDIR/config.json; False when it already held `text`."""
    return atomic_write(cbdir / "config.json", text)


def crossbar_binary() -> str:
    """The `crossbar` of this Python environment, else the one on PATH."""
    beside = Path(sys.executable).with_name("crossbar")
    if beside.is_file():
        return str(beside)
    found = shutil.which("crossbar")
    if found is None:
        raise CrossbarConfigError(
            "crossbar is not installed (needed to make the node key): "
            "pip install 'lbsync[edge]'")
    return found


def read_node_pubkey(cbdir: Path) -> str | None:
    """The ed25519 public key in CBDIR/key.pub, or None when there is no key yet."""
    try:
        text = (cbdir / "key.pub").read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as e:
        raise CrossbarConfigError(f"cannot read {cbdir / 'key.pub'}: {e}") from None
    for line in text.splitlines():
        tag, _, value = line.partition(":")
        if tag.strip().lower() == "public-key-ed25519" and _PUBKEY.fullmatch(value.strip()):
            return value.strip()
    raise CrossbarConfigError(f"{cbdir / 'key.pub'} has no public-key-ed25519 line")


def ensure_node_key(cbdir: Path, crossbar: str | None = None) -> str:
    """The node's public key; Crossbar generates the key pair first if there is none.

    `crossbar keys` makes key.priv/key.pub in the node's own format when they are missing,
    the same files `crossbar start` would make, so the node keeps this identity.
    """
    if (pubkey := read_node_pubkey(cbdir)) is not None:
        return pubkey
    cbdir.mkdir(parents=True, exist_ok=True)
    binary = crossbar or crossbar_binary()
    try:
        result = subprocess.run([binary, "keys", "--cbdir", str(cbdir)], capture_output=True,
                                text=True, timeout=120, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise CrossbarConfigError(f"{binary} keys --cbdir {cbdir}: {e}") from None
    pubkey = read_node_pubkey(cbdir)
    if result.returncode != 0 or pubkey is None:
        tail = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no output"]
        raise CrossbarConfigError(
            f"{binary} keys --cbdir {cbdir} made no node key (exit {result.returncode}): "
            f"{tail[0]}")
    return pubkey
