"""diff(actual, desired) -> Plan (pure).

`actual` is HAProxy's own answer to `show servers state` (with session counts), so the
plan heals whatever happened behind lbsync's back: a lost event, a restart of either side,
a server an operator deleted.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from .model import (
    OP_RUNNING,
    AddrUpdate,
    DesiredState,
    Plan,
    Server,
    ServerState,
    WeightUpdate,
)
from .settings import Settings


@dataclass(frozen=True)
class Holds:
    """What lbsync remembers of the servers, as the plan reads it (lbsync.memory.Memory).

    `drain_started` is when lbsync first saw each server out of rotation (drain or
    maintenance); `applied_weights` the weight lbsync last gave each server (an
    agent-check may move HAProxy's own figure, and lbsync must not fight it);
    `held_by_us` the drains and maintenance lbsync set; `removing` the servers lbsync
    sent the removal of.
    """

    drain_started: Mapping[str, float] = field(default_factory=dict)
    applied_weights: Mapping[str, int] = field(default_factory=dict)
    held_by_us: frozenset[str] = frozenset()
    removing: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Timeouts:
    """How long a leave (`drain`) and a failed member (`failed_grace`, `failed_timeout`)
    may keep their sessions: --drain-timeout, --failed-grace, --failed-timeout."""

    drain: float
    failed_grace: float = 0.0
    failed_timeout: float = float("inf")

    @classmethod
    def of(cls, settings: Settings) -> Timeouts:
        return cls(settings.drain_timeout, settings.failed_grace, settings.failed_timeout)


def make_plan(
    actual: Sequence[ServerState],
    desired: DesiredState,
    holds: Holds,
    timeouts: Timeouts,
    *,
    now: float,
    unreadable: frozenset[str] = frozenset(),
) -> Plan:
    """What to do now. Servers out of rotation come back as `waiting` until they are empty.

    A drain or maintenance lbsync did not set (an operator's, a node's agent-check
    answering `maint` while it stops) is left alone on a desired server: only holds in
    `holds.held_by_us` are undone when their member comes back.

    A leaving member's server goes to maintenance, not drain: HAProxy's drain still sends
    it every client that carries its cookie, maintenance redispatches them (`option
    redispatch`) and keeps its open sessions. It is removed once those end, or after
    `timeouts.drain`. A server already in maintenance whose member is not desired waits
    the same way, whoever set it (lbsync, or the node's own agent-check), unless it is in
    `removing`: lbsync had sent its removal, and a half-done removal is finished.

    A failed member's server is drained (`suspect`), not put in maintenance: maintenance
    pauses HAProxy's health check, and the check is the second opinion lbsync waits for.
    Serf alone may be wrong (gossip lost while HTTP flows, or a leaving member called
    failed before its leave intent arrives), and a live member's sticky clients are best
    served where their session is. Its sessions are cut (`kill`) only once `failed_grace`
    has passed and HAProxy's check also says DOWN, or after `failed_timeout` whatever the
    check says. A crash fails the check within a couple of intervals, and a crashed
    member's sessions end by themselves (a server with none left is removed at once), so
    a crash still costs no longer than before.

    A server whose member's registry file could not be read (`unreadable`) is left as it
    is: a damaged file says nothing about the member, and must not take it out.
    """
    have = {s.name: s for s in actual}
    drain_started, applied_weights = holds.drain_started, holds.applied_weights
    held_by_us, removing = holds.held_by_us, holds.removing
    drain_timeout = timeouts.drain
    failed_grace, failed_timeout = timeouts.failed_grace, timeouts.failed_timeout
    add: list[Server] = []
    undrain: list[str] = []
    weights: list[WeightUpdate] = []
    addrs: list[AddrUpdate] = []
    for name, want in sorted(desired.servers.items()):
        cur = have.get(name)
        if cur is None:
            add.append(want)
            continue
        if (cur.addr, cur.port) != (want.addr, want.port):
            addrs.append(AddrUpdate(name, want.addr, want.port))
        if applied_weights.get(name, cur.iweight) != want.weight:
            weights.append(WeightUpdate(name, want.weight))
        if cur.out_of_rotation and name in held_by_us:
            undrain.append(name)

    maint: list[str] = []
    remove: list[str] = []
    suspect: list[str] = []
    kill: list[str] = []
    waiting: list[str] = []
    for name, cur in sorted(have.items()):
        if name in desired.servers or name in unreadable:
            continue
        since = now - drain_started.get(name, now)
        if cur.forced_maint and name in removing:
            remove.append(name)  # an interrupted removal of lbsync's own
        elif name in desired.failed:
            # In maintenance the check is paused (op_state reads stopped): no second opinion.
            check_down = not cur.forced_maint and cur.op_state != OP_RUNNING
            if not cur.out_of_rotation:
                suspect.append(name)
            elif since >= failed_grace and (check_down or since >= failed_timeout):
                kill.append(name)
            elif cur.sessions == 0:
                remove.append(name)
            else:
                waiting.append(name)
        elif not cur.forced_maint:
            maint.append(name)  # also a drained one: drain still takes its cookie holders
        elif cur.sessions == 0 or since >= drain_timeout:
            remove.append(name)
        else:
            waiting.append(name)

    going = set(maint) | set(remove) | set(suspect) | set(kill) | set(waiting)
    if going and not add and going >= have.keys():
        # Never empty the backend on one update: keep the last servers and let the health
        # checks mark them DOWN; a gossip glitch then costs nothing when it heals.
        return Plan(kept=tuple(sorted(going)))
    return Plan(
        add=tuple(add), undrain=tuple(undrain), maint=tuple(maint),
        remove=tuple(remove), suspect=tuple(suspect), kill=tuple(kill),
        weights=tuple(weights), addrs=tuple(addrs),
        waiting=tuple(waiting),
    )


def servers_after(
    plan: Plan, actual: Sequence[ServerState], desired: DesiredState,
    applied_weights: Mapping[str, int],
) -> list[Server]:
    """The servers HAProxy holds once `plan` is applied: what haproxy.cfg must list.

    Servers still finishing their sessions, and kept ones, stay in the file, so a reload in
    the middle of a leave keeps them (the saved server state brings their drain or
    maintenance flag back).
    """
    have = {s.name: s for s in actual}
    out = dict(desired.servers)
    for name in (*plan.kept, *plan.waiting, *plan.maint, *plan.suspect):
        cur = have[name]
        spelled = desired.known.get(name)
        out[name] = Server(
            name, cur.addr, cur.port, applied_weights.get(name, cur.iweight),
            name if desired.explicit_cookies else None,
            spelled.agent_port if spelled else None,
        )
    return [out[n] for n in sorted(out)]
