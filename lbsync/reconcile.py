"""One reconcile pass: registry -> desired -> plan -> runtime ops -> haproxy.cfg -> reload?

`Reconciler.tick(now)` is the whole cycle; the daemon's loop (lbsync.loop) calls it after
each burst of events and on a timer. It has two halves, each with its own state:
`ServerSync` (plan + apply through the Runtime API, with lbsync's memory of its holds) and
`ConfigSync` (haproxy.cfg through the render pipeline, reloads rate-limited, the
server-state file). Every OS effect goes through one `Effects` object.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from . import memory
from .apply import Outcome, ResponseCheck, Runtime, apply_steps, steps, still_attached
from .desired import desired_state
from .files import atomic_write
from .model import DesiredState, LbsyncError, Plan, Refusal, Server, ServerState
from .plan import Timeouts, make_plan, servers_after
from .registry import Registry
from .render import BackgroundInstall, ConfigPipeline, structure_hash
from .settings import Settings

log = logging.getLogger("lbsync.reconcile")


class Master(Protocol):
    def reload(self) -> None: ...


@dataclass(frozen=True)
class TickResult:
    """What one pass did: the loop's cue (busy) and what lbsync.metrics counts."""

    plan: Plan
    busy: bool  # drains in progress, a reload waiting or a del to retry: come back soon
    outcomes: tuple[Outcome, ...] = ()
    refused: tuple[Refusal, ...] = ()
    reloaded: bool = False
    # Why this pass was not a good one (HAProxy unreachable, a candidate config rejected,
    # a reload or a command refused); None when it was.
    problem: str | None = None


@dataclass
class Effects:
    """What a pass does to the world; tests hand in fakes."""

    runtime: Runtime  # HAProxy's Runtime API: `show servers state`, the commands
    master: Master | None  # the master CLI, for reloads; None: lbsync never reloads
    haproxy_check: Callable[[Path], None]  # `haproxy -c` on a candidate file
    response_error: ResponseCheck  # HAProxy's answer -> its complaint, or None
    wall: Callable[[], float] = time.time  # the memory file keeps wall-clock times


class ServerSync:
    """HAProxy's servers in step with the desired ones: plan, then runtime commands,
    remembering which holds and removals were lbsync's own (lbsync.memory)."""

    def __init__(self, settings: Settings, fx: Effects) -> None:
        self.settings = settings
        self.fx = fx
        self.timeouts = Timeouts.of(settings)
        self.mem = memory.Memory(memory.memory_path(settings.state_file), fx.wall)

    def apply(self, actual: list[ServerState], desired: DesiredState, now: float,
              unreadable: frozenset[str]) -> tuple[Plan, list[Outcome], list[Server]]:
        """(the plan, what HAProxy answered, the servers haproxy.cfg must list)."""
        self.mem.observe(actual, now)
        plan = make_plan(actual, desired, self.mem.holds(), self.timeouts, now=now,
                         unreadable=unreadable)
        if plan.kept:
            log.warning("keeping servers=%s: removing them would empty backend %s",
                        ",".join(plan.kept), self.settings.backend)
        if going := {*plan.remove, *plan.kill}:
            self.mem.start_removals(going, now)
        todo = steps(plan, self.settings, dynamic_cookies=not desired.explicit_cookies,
                     current={s.name: s for s in actual})
        outcomes = apply_steps(self.fx.runtime, todo, self.fx.response_error)
        self.mem.record(plan, outcomes, now)
        self.mem.save(now)
        return plan, outcomes, servers_after(plan, actual, desired, self.mem.applied_weights)


@dataclass(frozen=True)
class ConfigOutcome:
    reload_waiting: bool = False  # a reload is wanted but held back (rate limit, failure)
    write_waiting: bool = False  # the background write failed in a way worth retrying
    reloaded: bool = False
    problem: str | None = None


class ConfigSync:
    """haproxy.cfg equal to what runs: written through the render pipeline, and a reload
    (rate-limited, server state saved first) only when its structure changed.

    With `background=True` (the daemon), a file whose structure is unchanged (a membership
    change, already applied through the Runtime API) is validated and swapped on a writer
    thread (lbsync.render.BackgroundInstall), so the next pass need not wait for
    `haproxy -c`. The first write, a structure change and `wait=True` stay synchronous.
    """

    def __init__(self, settings: Settings, fx: Effects, background: bool = False) -> None:
        self.settings = settings
        self.fx = fx
        self.pipeline = ConfigPipeline(settings, fx.haproxy_check)
        self.writer = BackgroundInstall(self.pipeline) if background else None
        self.running_structure: str | None = None  # structure hash of the config HAProxy runs
        self.last_reload = float("-inf")
        self.reloads = 0
        cfg = settings.haproxy_config
        if cfg.exists():
            self.running_structure = structure_hash(cfg.read_text(encoding="utf-8"))

    def write(self, servers: list[Server], explicit_cookies: bool, now: float, *,
              wait: bool = False) -> ConfigOutcome:
        """Render, validate, swap atomically; reload when the structure changed. `wait`:
        the file is written before this returns, even with a background writer."""
        cfg = self.settings.haproxy_config
        text = self.pipeline.render(servers, explicit_cookies)
        if self.writer is not None:
            if (not wait and self.running_structure is not None
                    and structure_hash(text) == self.running_structure):
                self.writer.submit(text, f"servers={len(servers)}")
                # An earlier background install's failure, until one succeeds.
                return ConfigOutcome(problem=self.writer.problem,
                                     write_waiting=self.writer.retry)
            self.writer.flush()  # what it was writing must not land after this text
        started = time.monotonic()
        try:
            changed = self.pipeline.install(text)
        except LbsyncError as e:
            log.error("render rejected by haproxy -c, keeping %s: %s", cfg, e)
            return ConfigOutcome(problem="haproxy -c rejected the rendered config")
        if changed:
            log.info("write config=%s servers=%d took=%.1fms", cfg, len(servers),
                     (time.monotonic() - started) * 1000)
        wanted = structure_hash(text)
        if self.running_structure is None:
            self.running_structure = wanted  # nothing known to run yet: HAProxy starts from it
        if wanted == self.running_structure or self.fx.master is None:
            return ConfigOutcome()
        if now - self.last_reload < self.settings.reload_min_interval:
            return ConfigOutcome(reload_waiting=True)
        try:
            self.reload(self.fx.master, now)
        except LbsyncError as e:
            log.error("reload failed, will retry: %s", e)
            self.last_reload = now
            return ConfigOutcome(reload_waiting=True, problem="reload failed")
        self.running_structure = wanted
        return ConfigOutcome(reloaded=True)

    def reload(self, master: Master, now: float) -> None:
        started = time.monotonic()
        self.save_server_state()
        master.reload()
        self.last_reload = now
        self.reloads += 1
        log.info("reload reason=structure-changed took=%.1fms",
                 (time.monotonic() - started) * 1000)

    def close(self) -> None:
        """Finish the background write, if any (the daemon's way out)."""
        if self.writer is not None:
            self.writer.close()

    def save_server_state(self) -> None:
        """Weights, drains and maintenance survive a reload through the state file."""
        answer = self.fx.runtime.execute(["show servers state"])[0]
        atomic_write(self.settings.state_file, answer.rstrip("\n") + "\n")


class Reconciler:
    """One pass: the registry's members -> desired servers -> `ServerSync` -> `ConfigSync`."""

    def __init__(self, settings: Settings, registry: Registry, version: tuple[int, int, int],
                 fx: Effects, background_writes: bool = False) -> None:
        self.settings = settings
        self.registry = registry
        self.version = version
        self.fx = fx
        self.servers = ServerSync(settings, fx)
        self.config = ConfigSync(settings, fx, background=background_writes)
        self.logged_refusals: set[Refusal] = set()
        self.runtime_down = False

    @property
    def mem(self) -> memory.Memory:
        return self.servers.mem

    def desired(self) -> DesiredState:
        d = desired_state(self.registry.load(), self.settings, self.version)
        for r in d.refused:
            if r not in self.logged_refusals:
                log.warning("refused member=%s: %s", r.member, r.reason)
                self.logged_refusals.add(r)
        return d

    def tick(self, now: float | None = None) -> TickResult:
        now = time.monotonic() if now is None else now
        desired = self.desired()
        try:
            actual = self.fx.runtime.servers_state(self.settings.backend)
        except LbsyncError as e:
            if not self.runtime_down:
                log.error("runtime API unreachable, keeping haproxy.cfg current: %s", e)
                self.runtime_down = True
            # HAProxy is down or restarting: the file is what it will start from.
            wrote = self.config.write(list(desired.servers.values()),
                                      desired.explicit_cookies, now, wait=True)
            return TickResult(Plan(), busy=False, refused=desired.refused,
                              problem=wrote.problem or "runtime API unreachable")
        if self.runtime_down:
            log.info("runtime API reachable again")
            self.runtime_down = False
        plan, outcomes, servers = self.servers.apply(actual, desired, now,
                                                     self.registry.damaged)
        wrote = self.config.write(servers, desired.explicit_cookies, now)
        draining = bool(plan.waiting or plan.maint or plan.suspect)
        refusals = [o for o in outcomes if o.error is not None and not still_attached(o)]
        problem = wrote.problem or (
            f"HAProxy refused {len(refusals)} command(s)" if refusals else None)
        return TickResult(plan, busy=draining or wrote.reload_waiting or wrote.write_waiting
                          or any(still_attached(o) for o in outcomes),
                          outcomes=tuple(outcomes), refused=desired.refused,
                          reloaded=wrote.reloaded, problem=problem)
