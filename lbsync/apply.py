"""Plan -> Runtime API commands, sent in one socket session.

`steps()` is pure: each step is one action on one server (one log line) with the
commands that carry it out. `apply_steps()` sends every command of every step through one
connection and reports each step's outcome from HAProxy's own answers.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from .desired import server_args
from .model import Plan, ServerState
from .settings import Settings

log = logging.getLogger("lbsync.apply")


class Runtime(Protocol):
    """What lbsync needs from HAProxy's Runtime API (lbsync.haproxy.runtime.RuntimeAPI)."""

    def execute(self, commands: list[str]) -> list[str]: ...

    def servers_state(self, backend: str) -> list[ServerState]: ...


@dataclass(frozen=True)
class Step:
    action: str  # add, undrain, maint, drain, del, kill, weight, addr
    server: str
    detail: str
    commands: tuple[str, ...]


@dataclass(frozen=True)
class Outcome:
    step: Step
    error: str | None


# HAProxy's answer to `del server` while connections (active or idle) still hold the server.
_STILL_ATTACHED = "still has connections attached"


def _removal(be: str, name: str, cur: ServerState | None) -> tuple[str, ...]:
    # `del server` needs maintenance and no connection left: the sessions a leave waited
    # for have ended by now, or --drain-timeout (--failed-timeout) has passed.
    cmds = [f"set server {be}/{name} state maint"]
    if cur is not None:
        # A connection whose stream ends while its server is in maintenance goes back to
        # the idle pool, and HAProxy < 3.0 refuses `del server` while one is there (for
        # up to two pool-purge-delay periods). Changing the address is what purges the
        # pool; changed and changed back, nothing else differs if the del is refused.
        other = cur.port + 1 if cur.port < 65535 else cur.port - 1
        cmds += [f"set server {be}/{name} addr {cur.addr} port {other}",
                 f"set server {be}/{name} addr {cur.addr} port {cur.port}"]
    return (*cmds, f"shutdown sessions server {be}/{name}", f"del server {be}/{name}")


def steps(plan: Plan, settings: Settings, *, dynamic_cookies: bool,
          current: Mapping[str, ServerState] | None = None) -> list[Step]:
    """`current` (HAProxy's servers by name) lets a removal purge the idle connections
    that would make HAProxy 2.6 refuse `del server`."""
    be = settings.backend
    have = current or {}
    out: list[Step] = []
    # Removals of crashed members first: they are the ones failing requests right now.
    for name in plan.kill:
        out.append(Step("kill", name, "member failed", _removal(be, name, have.get(name))))
    for name in plan.suspect:
        # Drain, not maint: the health check keeps running and says whether Serf is right.
        out.append(Step("drain", name, "member failed",
                        (f"set server {be}/{name} state drain",)))
    for s in plan.add:
        cmds = [f"add server {be}/{s.name} {s.addr}:{s.port} {server_args(s, settings)}"]
        if dynamic_cookies:
            # A dynamic server gets its hashed cookie only when the backend recomputes them.
            cmds.append(f"enable dynamic-cookie backend {be}")
        # Leaving maintenance straight to ready would make the server UP before any check
        # (HAProxy trusts a new server). Through drain, forced DOWN, then ready, it takes
        # load-balanced traffic only once a check passes, one --check-downinter after the add.
        if s.agent_port is not None:
            cmds.append(f"enable agent {be}/{s.name}")
        cmds += [f"enable health {be}/{s.name}", f"set server {be}/{s.name} state drain",
                 f"set server {be}/{s.name} health down", f"set server {be}/{s.name} state ready"]
        out.append(Step("add", s.name, f"addr={s.addr}:{s.port} weight={s.weight}", tuple(cmds)))
    for name in plan.undrain:
        out.append(Step("undrain", name, "member is back",
                        (f"set server {be}/{name} state ready",)))
    for w in plan.weights:
        out.append(Step("weight", w.name, f"weight={w.weight}",
                        (f"set weight {be}/{w.name} {w.weight}",)))
    for a in plan.addrs:
        out.append(Step("addr", a.name, f"addr={a.addr}:{a.port}",
                        (f"set server {be}/{a.name} addr {a.addr} port {a.port}",)))
    for name in plan.maint:
        # Maintenance: no new connection at all, cookie holders are redispatched, open
        # sessions go on (no `shutdown sessions` until the removal).
        out.append(Step("maint", name, "member leaving", (f"set server {be}/{name} state maint",)))
    for name in plan.remove:
        out.append(Step("del", name, "leave done", _removal(be, name, have.get(name))))
    return out


def apply_steps(runtime: Runtime, todo: Sequence[Step],
                response_error: ResponseCheck) -> list[Outcome]:
    """Send all commands in one session; one log line per step, with its outcome."""
    if not todo:
        return []
    commands = [c for st in todo for c in st.commands]
    started = time.monotonic()
    answers = runtime.execute(commands)
    # One round trip carries the whole batch, so each step reports the batch's time.
    took_ms = (time.monotonic() - started) * 1000
    outcomes: list[Outcome] = []
    i = 0
    for st in todo:
        error = None
        for cmd in st.commands:
            problem = response_error(cmd, answers[i])
            i += 1
            if problem and error is None:
                error = f"{cmd!r}: {problem}"
        outcomes.append(Outcome(st, error))
        if still_attached(outcomes[-1]):
            # `shutdown sessions` ends the streams, but HAProxy frees the server's
            # connections a moment later: the next pass deletes it.
            log.info("%s server=%s %s waiting: connections still attached, retrying",
                     st.action, st.server, st.detail)
        elif error:
            log.error("%s server=%s %s failed: %s", st.action, st.server, st.detail, error)
        else:
            log.info("%s server=%s %s took=%.1fms batch=%d", st.action, st.server, st.detail,
                     took_ms, len(todo))
    return outcomes


def still_attached(outcome: Outcome) -> bool:
    """A `del server` HAProxy refused because connections were not yet freed: the next
    pass (soon) deletes it. Other refusals wait for the next resync."""
    return outcome.error is not None and _STILL_ATTACHED in outcome.error


class ResponseCheck(Protocol):
    def __call__(self, command: str, answer: str) -> str | None: ...
