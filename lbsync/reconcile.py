"""One reconcile pass: registry -> desired -> plan -> runtime ops -> haproxy.cfg -> reload?

`Reconciler.tick(now)` is the whole cycle; the daemon (lbsync.agent) calls it after each
burst of events and on a timer. Every OS effect goes through an injected object.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from . import memory
from .apply import Outcome, ResponseCheck, Runtime, apply_steps, steps, still_attached
from .desired import desired_state
from .files import atomic_write, candidate_file
from .model import DesiredState, LbsyncError, Plan, Refusal, Server, ServerState
from .plan import make_plan, servers_after
from .registry import Registry
from .render import load_template, render_haproxy, structure_hash
from .settings import Settings

log = logging.getLogger("lbsync.reconcile")


class Master(Protocol):
    def reload(self) -> None: ...


@dataclass
class Memory:
    """What lbsync remembers between passes. The first four survive a restart through the
    memory file (lbsync.memory); the rest is rebuilt from HAProxy and the config."""

    # When lbsync first saw each server out of rotation (monotonic): leaves time out from it.
    drain_started: dict[str, float] = field(default_factory=dict)
    held_by_us: set[str] = field(default_factory=set)  # drains and maintenance lbsync set
    removing: set[str] = field(default_factory=set)  # removals lbsync has sent
    applied_weights: dict[str, int] = field(default_factory=dict)
    running_structure: str | None = None  # structure hash of the config HAProxy runs
    last_reload: float = float("-inf")
    reloads: int = 0
    logged_refusals: set[Refusal] = field(default_factory=set)
    runtime_down: bool = False
    saved: tuple[object, ...] | None = None  # what the memory file holds now


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


class Reconciler:
    def __init__(
        self,
        settings: Settings,
        registry: Registry,
        runtime: Runtime,
        master: Master | None,
        version: tuple[int, int, int],
        check_config: Callable[[Path], None],
        response_error: ResponseCheck,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.runtime = runtime
        self.master = master
        self.version = version
        self.check_config = check_config
        self.response_error = response_error
        self.mem = Memory()
        self.wall = wall
        self.memory_file = memory.memory_path(settings.state_file)
        # Read now, merged at the first pass: its times convert to that pass's clock.
        self._kept: memory.Kept | None = memory.read(self.memory_file)
        self._save_failing = False
        # Per pass, for TickResult: set by write_config() and reload().
        self._problem: str | None = None
        self._reloaded = False
        self.template_label, self.template_source = load_template(settings.template)
        cfg = settings.haproxy_config
        if cfg.exists():
            self.mem.running_structure = structure_hash(cfg.read_text(encoding="utf-8"))

    def desired(self) -> DesiredState:
        d = desired_state(self.registry.load(), self.settings, self.version)
        for r in d.refused:
            if r not in self.mem.logged_refusals:
                log.warning("refused member=%s: %s", r.member, r.reason)
                self.mem.logged_refusals.add(r)
        return d

    def tick(self, now: float | None = None) -> TickResult:
        now = time.monotonic() if now is None else now
        self._problem = None
        self._reloaded = False
        desired = self.desired()
        try:
            actual = self.runtime.servers_state(self.settings.backend)
        except LbsyncError as e:
            if not self.mem.runtime_down:
                log.error("runtime API unreachable, keeping haproxy.cfg current: %s", e)
                self.mem.runtime_down = True
            # HAProxy is down or restarting: the file is what it will start from.
            self.write_config(list(desired.servers.values()), desired.explicit_cookies, now)
            return TickResult(Plan(), busy=False, refused=desired.refused,
                              problem=self._problem or "runtime API unreachable")
        if self.mem.runtime_down:
            log.info("runtime API reachable again")
            self.mem.runtime_down = False

        if self._kept is not None:
            self._restore(self._kept, now)
            self._kept = None
        self._remember(actual, now)
        plan = make_plan(
            actual, desired, now=now, drain_started=self.mem.drain_started,
            drain_timeout=self.settings.drain_timeout,
            applied_weights=self.mem.applied_weights,
            held_by_us=frozenset(self.mem.held_by_us),
            removing=frozenset(self.mem.removing),
            failed_grace=self.settings.failed_grace,
            failed_timeout=self.settings.failed_timeout,
            unreadable=self.registry.damaged,
        )
        if plan.kept:
            log.warning("keeping servers=%s: removing them would empty backend %s",
                        ",".join(plan.kept), self.settings.backend)
        if going := {*plan.remove, *plan.kill}:
            # On disk before the commands: an agent stopped between `maint` and `del`
            # finishes the removal when it starts again, and undoes it if the member is back.
            self.mem.removing |= going
            self.mem.held_by_us |= going
            self.save_memory(now)
        todo = steps(plan, self.settings, dynamic_cookies=not desired.explicit_cookies,
                     current={s.name: s for s in actual})
        outcomes = apply_steps(self.runtime, todo, self.response_error)
        self._record(plan, outcomes, now)
        self.save_memory(now)
        servers = servers_after(plan, actual, desired, self.mem.applied_weights)
        reload_waiting = self.write_config(servers, desired.explicit_cookies, now)
        draining = bool(plan.waiting or plan.maint or plan.suspect)
        refusals = [o for o in outcomes if o.error is not None and not still_attached(o)]
        problem = self._problem or (
            f"HAProxy refused {len(refusals)} command(s)" if refusals else None)
        return TickResult(plan, busy=draining or reload_waiting
                          or any(still_attached(o) for o in outcomes),
                          outcomes=tuple(outcomes), refused=desired.refused,
                          reloaded=self._reloaded, problem=problem)

    def _record(self, plan: Plan, outcomes: list[Outcome], now: float) -> None:
        """Remember what HAProxy accepted: the weights lbsync gave, the holds it set."""
        new_weights = {a.name: a.weight for a in plan.add}
        new_weights |= {u.name: u.weight for u in plan.weights}
        for o in outcomes:
            if o.error is not None:
                continue
            name, action = o.step.server, o.step.action
            if action in ("add", "weight"):
                self.mem.applied_weights[name] = new_weights[name]
            elif action in ("maint", "drain"):
                self.mem.held_by_us.add(name)
                # The timeouts count from the first hold: a suspect that then leaves
                # keeps its start.
                self.mem.drain_started.setdefault(name, now)
            elif action == "undrain":
                self.mem.held_by_us.discard(name)
                self.mem.removing.discard(name)
            elif action in ("del", "kill"):
                self._forget(name)

    def _forget(self, name: str) -> None:
        self.mem.held_by_us.discard(name)
        self.mem.removing.discard(name)
        self.mem.applied_weights.pop(name, None)
        self.mem.drain_started.pop(name, None)

    def _remember(self, actual: list[ServerState], now: float) -> None:
        out = {s.name for s in actual if s.out_of_rotation}
        for name in out - self.mem.drain_started.keys():
            self.mem.drain_started[name] = now
        for name in self.mem.drain_started.keys() - out:
            del self.mem.drain_started[name]
        # A hold HAProxy no longer shows (set ready, or the server deleted by someone else)
        # is no longer lbsync's: a later hold by an operator must not be undone as ours.
        self.mem.held_by_us &= out
        self.mem.removing &= out
        names = {s.name for s in actual}
        for name in self.mem.applied_weights.keys() - names:
            del self.mem.applied_weights[name]
        for s in actual:
            self.mem.applied_weights.setdefault(s.name, s.iweight)

    def _restore(self, kept: memory.Kept, now: float) -> None:
        """Merge what a previous agent left; its wall-clock times onto this pass's clock."""
        wall = self.wall()
        for name, since in kept.out_since.items():
            self.mem.drain_started[name] = now - max(0.0, wall - since)
        self.mem.held_by_us |= kept.held_by_us
        self.mem.removing |= kept.removing
        self.mem.applied_weights.update(kept.applied_weights)
        if kept != memory.Kept():
            log.info("memory file %s: holds=%s removing=%s", self.memory_file,
                     ",".join(sorted(kept.held_by_us)) or "-",
                     ",".join(sorted(kept.removing)) or "-")

    def save_memory(self, now: float) -> None:
        """Write the memory file when its content changed; a failure is warned about once
        in a row (lbsync goes on, and only a restart would lose what it holds)."""
        m = self.mem
        snapshot = (sorted(m.drain_started.items()), sorted(m.held_by_us), sorted(m.removing),
                    sorted(m.applied_weights.items()))
        if snapshot == m.saved:
            return
        wall = self.wall()
        kept = memory.Kept({n: wall - (now - t) for n, t in m.drain_started.items()},
                           frozenset(m.held_by_us), frozenset(m.removing),
                           dict(m.applied_weights))
        try:
            memory.write(self.memory_file, kept)
        except OSError as e:
            if not self._save_failing:
                log.error("cannot write memory file %s (retrying): %s", self.memory_file, e)
            self._save_failing = True
            return
        self._save_failing = False
        m.saved = tuple(snapshot)

    def render(self, servers: list[Server], explicit_cookies: bool) -> str:
        return render_haproxy(self.template_label, self.template_source, self.settings,
                              servers, explicit_cookies)

    def write_config(self, servers: list[Server], explicit_cookies: bool, now: float) -> bool:
        """Render, validate, swap atomically; reload when the structure changed.

        Returns True while a reload is wanted but held back by the rate limit.
        """
        cfg = self.settings.haproxy_config
        text = self.render(servers, explicit_cookies)
        current = cfg.read_text(encoding="utf-8") if cfg.exists() else None
        if text != current:
            started = time.monotonic()
            with candidate_file(cfg, text) as candidate:
                try:
                    self.check_config(candidate)
                except LbsyncError as e:
                    log.error("render rejected by haproxy -c, keeping %s: %s", cfg, e)
                    self._problem = "haproxy -c rejected the rendered config"
                    return False
            atomic_write(cfg, text)
            log.info("write config=%s servers=%d took=%.1fms", cfg, len(servers),
                     (time.monotonic() - started) * 1000)
        wanted = structure_hash(text)
        if self.mem.running_structure is None:
            self.mem.running_structure = wanted  # nothing known to run yet: HAProxy starts from it
        if wanted == self.mem.running_structure or self.master is None:
            return False
        if now - self.mem.last_reload < self.settings.reload_min_interval:
            return True
        try:
            self.reload(now)
        except LbsyncError as e:
            log.error("reload failed, will retry: %s", e)
            self.mem.last_reload = now
            self._problem = "reload failed"
            return True
        self.mem.running_structure = wanted
        return False

    def reload(self, now: float) -> None:
        assert self.master is not None
        started = time.monotonic()
        self.save_server_state()
        self.master.reload()
        self.mem.last_reload = now
        self.mem.reloads += 1
        self._reloaded = True
        log.info("reload reason=structure-changed took=%.1fms",
                 (time.monotonic() - started) * 1000)

    def save_server_state(self) -> None:
        """Weights, drains and maintenance survive a reload through the state file."""
        answer = self.runtime.execute(["show servers state"])[0]
        atomic_write(self.settings.state_file, answer.rstrip("\n") + "\n")
