"""One realm across the fleet: the router-to-router links between edge nodes (pure part).

Every edge node's router keeps one Crossbar router link ("rlink") to every other live edge
node's router. A link on node A to node B *pulls*: it mirrors A's subscriptions and
registrations onto B, so B's publishers reach A's subscribers and B's callers reach A's
callees. B's link to A does the same the other way. Crossbar drops an event or a call that
was forwarded once already (`forward_for`), so in this full mesh each message crosses at
most one link: nothing is delivered twice and nothing loops.

Who talks to whom, and what each file holds:

    Serf members --(sidecar: `lbsync node --cbdir`)--> CBDIR/links.json   the wanted peers
    CBDIR/links.json --(router component lbsync.edge.rlinks)--> the links themselves
    the links --(router component)--> CBDIR/links-state.json           each link's state,
                                                                      both ways
    CBDIR/links-state.json --(sidecar)--> log lines, the `links` tag, ready=1

The links authenticate with WAMP-cryptosign. Every member holds the fleet secret (the
Serf gossip key in Docker, the cluster's `fleet.secret` file on one machine); the fleet's
Ed25519 key is derived from it, written as each node's Crossbar key (CBDIR/key.priv), and
the routers' link transports accept only that key, for the role `rlink` (the role name
Crossbar's dealer treats as a link). A process without the secret cannot link in.

Both directions are watched: a link's own connection (this node's subscribers get the
peer's events), and the peer's link to here, seen from this side by the peer's beacon
procedure that the peer's link registers on this router (this node's callers reach the
peer's callees). A pair of nodes is "up" only when both hold.

Everything here is pure or touches only files, so the sidecar, the CLI and the tests share
it; the Twisted side is lbsync.edge.rlinks.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import json
import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import psutil

from ..files import atomic_write
from ..model import LbsyncError, Member, MemberStatus
from ..validate import name_problem

WANTED_FILE = "links.json"
STATE_FILE = "links-state.json"
LINK_PATH = "ws"  # the path of the router's link transport: ws://HOST:PORT/ws
LINK_ROLE = "rlink"  # Crossbar's dealer recognises link sessions by this role name
LINK_TAG = "link-port"  # the Serf tag that says where a member's router takes links
LINKS_TAG = "links"  # the Serf tag a member reports its links with: UP/WANTED
DEFAULT_LINK_PORT = 8082
REALM = "realm1"  # the realm the edge nodes serve (templates/crossbar.json.j2)
# Domain separation: the fleet key is never the secret itself, and never another key
# derived from it.
_KDF_LABEL = b"lbsync fleet router-link key v1"
MIN_SECRET_BYTES = 16


class LinkError(LbsyncError):
    """The fleet links cannot be set up as asked."""


# --- the fleet key -------------------------------------------------------------------------


def read_secret(text: str, where: str) -> bytes:
    """The fleet secret from its text form: base64 (what `serf keygen` prints), at least
    16 bytes once decoded."""
    text = text.strip()
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise LinkError(f"{where}: the fleet secret is not base64 "
                        "(make one with `serf keygen` or `lbsync up`)") from None
    if len(raw) < MIN_SECRET_BYTES:
        raise LinkError(f"{where}: the fleet secret is {len(raw)} bytes; at least "
                        f"{MIN_SECRET_BYTES} are needed")
    return raw


def new_secret() -> str:
    """A fresh fleet secret, base64 of 32 random bytes."""
    return base64.b64encode(os.urandom(32)).decode()


def fleet_seed(secret: bytes) -> bytes:
    """The 32-byte Ed25519 seed of the fleet key: HMAC-SHA256(secret, label)."""
    return hmac.new(secret, _KDF_LABEL, hashlib.sha256).digest()


def fleet_public_key(secret: bytes) -> str:
    """The fleet key's public half, hex, as Crossbar's `authorized_keys` lists it."""
    from nacl.signing import SigningKey  # PyNaCl comes with the edge extra (autobahn)

    return SigningKey(fleet_seed(secret)).verify_key.encode().hex()


def key_files(secret: bytes, node: str) -> tuple[str, str]:
    """(key.priv, key.pub) in Crossbar's node key format, holding the fleet key."""
    from nacl.signing import SigningKey

    key = SigningKey(fleet_seed(secret))
    public = key.verify_key.encode().hex()
    tags = {"creator": f"lbsync@{node}", "created-at": "2000-01-01T00:00:00.000Z",
            "machine-id": node, "public-key-ed25519": public}
    head = ("Crossbar.io node key of an lbsync edge node: the fleet's router-link key, "
            "derived from the fleet secret (lbsync.edge.links).\n\n")
    pub = head + "".join(f"{k}: {v}\n" for k, v in tags.items())
    priv = pub + f"private-key-ed25519: {key.encode().hex()}\n"
    return priv, pub


def write_key_files(cbdir: Path, secret: bytes, node: str) -> None:
    """Write CBDIR/key.priv (0600) and key.pub, replacing a key of another fleet."""
    priv, pub = key_files(secret, node)
    atomic_write(cbdir / "key.priv", priv, mode=0o600)
    atomic_write(cbdir / "key.pub", pub)


# --- the wanted peers (sidecar -> router component) ------------------------------------------


@dataclass(frozen=True)
class Peer:
    """Another edge node's router, where its link transport listens."""

    name: str
    host: str
    port: int

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"ws://{host}:{self.port}/{LINK_PATH}"

    def endpoint(self) -> dict[str, object]:
        """Crossbar's connecting endpoint for the link's transport."""
        version = ipaddress.ip_address(self.host).version
        return {"type": "tcp", "host": self.host, "port": self.port,
                **({"version": 6} if version == 6 else {})}


def peer_of(member: Member) -> Peer | None:
    """The Peer a Serf member offers, or None when it is not a linkable edge node.

    A linkable member is alive, tagged role=edge, has a valid name and a link-port tag.
    Its address is the one Serf gossips from.
    """
    if member.status != MemberStatus.ALIVE or member.tags.get("role") != "edge":
        return None
    port_text = member.tags.get(LINK_TAG, "")
    if not port_text.isascii() or not port_text.isdigit() or name_problem(member.name):
        return None
    port = int(port_text)
    if not 1 <= port <= 65535:
        return None
    try:
        host = str(ipaddress.ip_address(member.addr.partition("%")[0]))
    except ValueError:
        return None
    return Peer(member.name, host, port)


def wanted_peers(members: Iterable[Member], me: str) -> dict[str, Peer]:
    """The peers this node must link to: every other linkable member."""
    return {p.name: p for m in members if m.name != me and (p := peer_of(m)) is not None}


def ready_peers(members: Iterable[Member], me: str) -> set[str]:
    """The wanted peers that serve clients (ready=1): a new node waits for its links to
    these before it takes clients itself."""
    return {m.name for m in members
            if m.name != me and m.tags.get("ready") == "1" and peer_of(m) is not None}


def render_wanted(realm: str, peers: Mapping[str, Peer]) -> str:
    return json.dumps({"realm": realm, "peers": {
        name: {"host": p.host, "port": p.port} for name, p in sorted(peers.items())}},
        indent=2) + "\n"


def write_wanted(cbdir: Path, realm: str, peers: Mapping[str, Peer]) -> bool:
    """Atomically write CBDIR/links.json; False when it already said the same."""
    return atomic_write(cbdir / WANTED_FILE, render_wanted(realm, peers))


def parse_wanted(text: str) -> tuple[str, dict[str, Peer]]:
    """(realm, peers) from links.json; LinkError on anything else."""
    try:
        data = json.loads(text)
        realm = data["realm"]
        peers = {str(name): Peer(str(name), str(ipaddress.ip_address(p["host"])), int(p["port"]))
                 for name, p in data["peers"].items()}
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise LinkError(f"{WANTED_FILE} is damaged: {e!r}") from None
    if not isinstance(realm, str):
        raise LinkError(f"{WANTED_FILE} is damaged: realm {realm!r}")
    return realm, peers


# --- the links' state (router component -> sidecar, CLI) -------------------------------------


@dataclass(frozen=True)
class LinkState:
    peer: str
    url: str
    connected: bool  # this router's link to the peer (the peer's events and callers reach here)
    since: float  # wall-clock time of the last change (up or down)
    ups: int  # how many times the link came up
    downs: int  # how many times it went down
    # The peer's link to this router carries its registrations here: the peer's beacon
    # procedure (beacon(peer)) is registered on this router.
    incoming: bool = False

    @property
    def both(self) -> bool:
        return self.connected and self.incoming


def beacon(node: str) -> str:
    """The procedure each edge node's router registers; on another node's router it is
    there exactly when that node's link to it forwards registrations."""
    return f"lbsync.fleet.{node}.beacon"


@dataclass(frozen=True)
class LinksReport:
    pid: int  # the router worker's
    updated: float
    links: dict[str, LinkState]

    @property
    def up(self) -> set[str]:
        """The peers linked both ways: the clients here reach the peer's, and back."""
        return {name for name, s in self.links.items() if s.both}


def render_state(pid: int, links: Iterable[LinkState], now: float | None = None) -> str:
    return json.dumps({
        "pid": pid, "updated": time.time() if now is None else now,
        "links": {s.peer: {"url": s.url, "connected": s.connected, "incoming": s.incoming,
                           "since": s.since, "ups": s.ups, "downs": s.downs}
                  for s in sorted(links, key=lambda s: s.peer)},
    }, indent=2) + "\n"


def parse_state(text: str) -> LinksReport:
    try:
        data = json.loads(text)
        links = {str(name): LinkState(str(name), str(s["url"]), bool(s["connected"]),
                                      float(s["since"]), int(s["ups"]), int(s["downs"]),
                                      bool(s.get("incoming", False)))
                 for name, s in data["links"].items()}
        return LinksReport(int(data["pid"]), float(data["updated"]), links)
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise LinkError(f"{STATE_FILE} is damaged: {e!r}") from None


def read_state(cbdir: Path) -> LinksReport | None:
    """The router component's last report, or None when there is none (yet), or when the
    router that wrote it is gone: then it says nothing about the links now."""
    try:
        text = (cbdir / STATE_FILE).read_text()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise LinkError(f"cannot read {cbdir / STATE_FILE}: {e.strerror}") from None
    report = parse_state(text)
    return report if psutil.pid_exists(report.pid) else None


def read_wanted(cbdir: Path) -> dict[str, Peer] | None:
    """The peers CBDIR/links.json lists, or None when the router links are off (no file)."""
    try:
        text = (cbdir / WANTED_FILE).read_text()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise LinkError(f"cannot read {cbdir / WANTED_FILE}: {e.strerror}") from None
    return parse_wanted(text)[1]


def linked(report: LinksReport | None, wanted: Iterable[str]) -> set[str]:
    """The wanted peers linked both ways, by the report (nobody without one)."""
    return set(wanted) & report.up if report is not None else set()


def links_tag(report: LinksReport | None, wanted: Iterable[str]) -> str:
    """The `links` Serf tag: UP/WANTED, counting only the wanted peers linked both ways."""
    wanted = set(wanted)
    return f"{len(linked(report, wanted))}/{len(wanted)}"


def describe(report: LinksReport | None, wanted: Mapping[str, Peer], now: float) -> list[str]:
    """One line per wanted or running link, for `lbsync links`."""
    links = report.links if report is not None else {}
    lines = []
    for name in sorted(set(wanted) | set(links)):
        state = links.get(name)
        if state is None:
            lines.append(f"{name:<16} starting   {wanted[name].url}")
            continue
        what = "up" if state.both else "down"
        if name not in wanted:
            what += " (unwanted: being removed)"
        ways = (f"to it {'up' if state.connected else 'down'}, "
                f"from it {'up' if state.incoming else 'not yet'}")
        lines.append(f"{name:<16} {what:<10} {state.url}  ({ways}) for "
                     f"{now - state.since:.0f} s, up {state.ups}x, down {state.downs}x")
    return lines
