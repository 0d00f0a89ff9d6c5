"""Plain values that flow through lbsync: members, servers, HAProxy's view, plans.

Everything here is a frozen dataclass with no I/O, so the pure stages (desired, plan,
render) can be tested with literals.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType


class LbsyncError(Exception):
    """An error with a message meant for the user: printed as one line, exit non-zero."""


class MemberStatus(StrEnum):
    """Serf's member status, as the `members` RPC and the registry spell it."""

    ALIVE = "alive"
    LEAVING = "leaving"
    LEFT = "left"
    FAILED = "failed"
    NONE = "none"


@dataclass(frozen=True)
class Member:
    """One Serf member as the registry keeps it."""

    name: str
    addr: str
    tags: Mapping[str, str] = field(default_factory=dict)
    status: MemberStatus = MemberStatus.ALIVE
    last_event: str = ""
    time: float = 0.0


class EventKind(StrEnum):
    """Serf event types that carry members."""

    JOIN = "member-join"
    LEAVE = "member-leave"
    FAILED = "member-failed"
    UPDATE = "member-update"
    REAP = "member-reap"


# The status a member event leaves its members in: the one reading of Serf's event names,
# for `lbsync handle` (serf.handler) and the registry alike. A reaped member had failed or
# left long enough ago (Serf's reconnect_timeout / tombstone_timeout) that Serf forgot it:
# it has no status any more, and lbsync forgets it too. The registry deletes its file, as
# a resync does for a member the `members` poll no longer lists, so its server goes the
# way of any server no member stands behind.
EVENT_STATUS: Mapping[EventKind, MemberStatus] = MappingProxyType({
    EventKind.JOIN: MemberStatus.ALIVE,
    EventKind.UPDATE: MemberStatus.ALIVE,
    EventKind.LEAVE: MemberStatus.LEFT,
    EventKind.FAILED: MemberStatus.FAILED,
    EventKind.REAP: MemberStatus.NONE,
})
# The events after which the registry keeps no record of their members.
FORGETS: frozenset[EventKind] = frozenset(
    kind for kind, status in EVENT_STATUS.items() if status is MemberStatus.NONE)


@dataclass(frozen=True)
class MemberEvent:
    """A Serf member event: one kind, several members (Serf batches them)."""

    kind: EventKind
    members: tuple[Member, ...]


@dataclass(frozen=True)
class Server:
    """A server HAProxy should run in the managed backend."""

    name: str
    addr: str
    port: int
    weight: int = 100
    cookie: str | None = None  # explicit cookie value; None when dynamic cookies are used
    agent_port: int | None = None  # the node's agent-check port (tag agent-port)


# Bits of `srv_admin_state` in `show servers state` (HAProxy's SRV_ADMF_*).
ADMIN_FMAINT = 0x01
ADMIN_IMAINT = 0x02
ADMIN_CMAINT = 0x04
ADMIN_FDRAIN = 0x08
ADMIN_IDRAIN = 0x10
ADMIN_RMAINT = 0x20
ADMIN_HMAINT = 0x40
ADMIN_MAINT_ANY = ADMIN_FMAINT | ADMIN_IMAINT | ADMIN_CMAINT | ADMIN_RMAINT | ADMIN_HMAINT

# `srv_op_state` (SRV_ST_*).
OP_STOPPED = 0
OP_STARTING = 1
OP_RUNNING = 2
OP_STOPPING = 3


@dataclass(frozen=True)
class ServerState:
    """One row of `show servers state` (plus the session count from `show stat`)."""

    backend: str
    name: str
    addr: str
    port: int
    op_state: int
    admin_state: int
    uweight: int
    iweight: int
    sessions: int = 0

    @property
    def in_maint(self) -> bool:
        return bool(self.admin_state & ADMIN_MAINT_ANY)

    @property
    def draining(self) -> bool:
        return bool(self.admin_state & ADMIN_FDRAIN)

    @property
    def forced_maint(self) -> bool:
        """FMAINT: `set server ... state maint`, or an agent-check answering `maint` (HAProxy
        sets the same bit for both, and clears FDRAIN with it)."""
        return bool(self.admin_state & ADMIN_FMAINT)

    @property
    def out_of_rotation(self) -> bool:
        """Forced into drain or maintenance: the two holds lbsync (or a node) can set."""
        return self.draining or self.forced_maint

    @property
    def up(self) -> bool:
        return self.op_state == OP_RUNNING and not self.in_maint

    @property
    def state_word(self) -> str:
        """What a person calls the state: UP, DOWN, MAINT or DRAIN."""
        if self.in_maint:
            return "MAINT"
        if self.draining:
            return "DRAIN"
        return "UP" if self.op_state in (OP_RUNNING, OP_STOPPING) else "DOWN"


@dataclass(frozen=True)
class Refusal:
    """A member input lbsync will not pass to HAProxy, and why."""

    member: str
    reason: str


@dataclass(frozen=True)
class DesiredState:
    """What the managed backend should hold, derived from members and settings."""

    servers: Mapping[str, Server]  # members that should serve
    leaving: frozenset[str] = frozenset()  # graceful leave: maintenance, then remove
    failed: frozenset[str] = frozenset()  # Serf says failed: drain, remove once HAProxy agrees
    refused: tuple[Refusal, ...] = ()
    explicit_cookies: bool = False  # HAProxy 3.0+: cookie = node name on every server
    # How every valid member (leaving and failed ones too) is spelled as a server, so a
    # draining server keeps its options in haproxy.cfg.
    known: Mapping[str, Server] = field(default_factory=dict)


@dataclass(frozen=True)
class WeightUpdate:
    name: str
    weight: int


@dataclass(frozen=True)
class AddrUpdate:
    name: str
    addr: str
    port: int


@dataclass(frozen=True)
class Plan:
    """Runtime-API work that turns HAProxy's actual backend into the desired one."""

    add: tuple[Server, ...] = ()
    undrain: tuple[str, ...] = ()  # lbsync drained it or put it in maintenance; member is back
    maint: tuple[str, ...] = ()  # member leaving: no new connection, sticky or not
    remove: tuple[str, ...] = ()  # sessions ended (or --drain-timeout): maint, shutdown, del
    suspect: tuple[str, ...] = ()  # failed member: drain now, kill once HAProxy agrees
    kill: tuple[str, ...] = ()  # failed member, its check DOWN too (or --failed-timeout)
    weights: tuple[WeightUpdate, ...] = ()
    addrs: tuple[AddrUpdate, ...] = ()
    kept: tuple[str, ...] = ()  # removals held back so the backend is never emptied
    waiting: tuple[str, ...] = ()  # out of rotation, sessions still open: come back later

    @property
    def empty(self) -> bool:
        return not (
            self.add or self.undrain or self.maint or self.remove
            or self.suspect or self.kill or self.weights or self.addrs
        )
