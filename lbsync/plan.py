"""diff(actual, desired) -> Plan (pure).

`actual` is HAProxy's own answer to `show servers state` (with session counts), so the
plan heals whatever happened behind lbsync's back: a lost event, a restart of either side,
a server an operator deleted.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from .model import (
    ADMIN_FMAINT,
    AddrUpdate,
    DesiredState,
    Plan,
    Server,
    ServerState,
    WeightUpdate,
)


def make_plan(
    actual: Sequence[ServerState],
    desired: DesiredState,
    *,
    now: float,
    drain_started: Mapping[str, float],
    drain_timeout: float,
    applied_weights: Mapping[str, int],
    drained_by_us: frozenset[str] = frozenset(),
    failed_grace: float = 0.0,
) -> Plan:
    """What to do now. Draining servers come back as `waiting` until they are empty.

    `drain_started` is when lbsync first saw each server draining; `applied_weights` the
    weight lbsync last gave each server (an agent-check may move HAProxy's own figure,
    and lbsync must not fight it). A drain or maintenance lbsync did not set (an operator's
    `disable server`, a node's agent-check answering `drain`) is left alone: only drains
    in `drained_by_us` are undone when their member comes back.

    A failed member's server is drained at once (`suspect`) and killed `failed_grace`
    seconds later if sessions are still attached: Serf may report a leaving member failed
    for a moment before its leave intent arrives, and the leave then gets a normal drain.
    A crashed member's sessions end by themselves, so the grace costs a crash nothing.
    """
    have = {s.name: s for s in actual}
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
        if cur.draining and name in drained_by_us:
            undrain.append(name)

    drain: list[str] = []
    remove: list[str] = []
    suspect: list[str] = []
    kill: list[str] = []
    waiting: list[str] = []
    for name, cur in sorted(have.items()):
        if name in desired.servers:
            continue
        # A failed member goes the way of a leaving one, with its own names and deadline.
        failed = name in desired.failed
        since = now - drain_started.get(name, now)
        if cur.admin_state & ADMIN_FMAINT:
            remove.append(name)  # already out of rotation (an interrupted removal)
        elif failed and failed_grace <= 0:
            kill.append(name)
        elif not cur.draining:
            (suspect if failed else drain).append(name)
        elif failed and since >= failed_grace:
            kill.append(name)
        elif cur.sessions == 0 or (not failed and since >= drain_timeout):
            remove.append(name)
        else:
            waiting.append(name)

    going = set(drain) | set(remove) | set(suspect) | set(kill) | set(waiting)
    if going and not add and going >= have.keys():
        # Never empty the backend on one update: keep the last servers and let the health
        # checks mark them DOWN; a gossip glitch then costs nothing when it heals.
        return Plan(kept=tuple(sorted(going)))
    return Plan(
        add=tuple(add), undrain=tuple(undrain), drain=tuple(drain),
        remove=tuple(remove), suspect=tuple(suspect), kill=tuple(kill),
        weights=tuple(weights), addrs=tuple(addrs),
        waiting=tuple(waiting),
    )


def servers_after(
    plan: Plan, actual: Sequence[ServerState], desired: DesiredState,
    applied_weights: Mapping[str, int],
) -> list[Server]:
    """The servers HAProxy holds once `plan` is applied: what haproxy.cfg must list.

    Draining and kept servers stay in the file, so a reload in the middle of a drain keeps
    them (the saved server state brings their drain flag back).
    """
    have = {s.name: s for s in actual}
    out = dict(desired.servers)
    for name in (*plan.kept, *plan.waiting, *plan.drain, *plan.suspect):
        cur = have[name]
        spelled = desired.known.get(name)
        out[name] = Server(
            name, cur.addr, cur.port, applied_weights.get(name, cur.iweight),
            name if desired.explicit_cookies else None,
            spelled.agent_port if spelled else None,
        )
    return [out[n] for n in sorted(out)]
