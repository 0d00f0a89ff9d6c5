"""What lbsync remembers of the servers between passes (`Memory`), and the part of it that
must outlive `lbsync agent`: a small JSON file.

HAProxy's `show servers state` says that a server is in drain or maintenance, not who put
it there. lbsync undoes only its own holds, and finishes only its own removals, so after a
restart it must still know which holds were its own, when each leave began (the
`--drain-timeout` counts from there, not from the restart) and the weights it gave. The
file lives beside the server-state file (`lbsync-memory.json`) and is written atomically.

Times are monotonic in the daemon and wall-clock in the file: a monotonic clock means
nothing to the next process.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .apply import Outcome
from .files import atomic_write
from .model import Plan, ServerState
from .plan import Holds

log = logging.getLogger("lbsync.memory")

MEMORY_FILE = "lbsync-memory.json"
_VERSION = 1


@dataclass(frozen=True)
class Kept:
    """What the file holds. `out_since` is wall-clock time (seconds since the epoch)."""

    out_since: dict[str, float] = field(default_factory=dict)  # out of rotation since
    held_by_us: frozenset[str] = frozenset()  # drains and maintenance lbsync set
    removing: frozenset[str] = frozenset()  # servers lbsync sent the removal of
    applied_weights: dict[str, int] = field(default_factory=dict)


def memory_path(state_file: Path) -> Path:
    return state_file.with_name(MEMORY_FILE)


def encode(kept: Kept) -> str:
    return json.dumps({
        "version": _VERSION,
        "out_since": {n: round(t, 3) for n, t in sorted(kept.out_since.items())},
        "held_by_us": sorted(kept.held_by_us),
        "removing": sorted(kept.removing),
        "applied_weights": dict(sorted(kept.applied_weights.items())),
    }, indent=1) + "\n"


def decode(text: str) -> Kept:
    """The file's content; ValueError saying what is wrong with it."""
    data = json.loads(text)
    if not isinstance(data, dict) or data.get("version") != _VERSION:
        raise ValueError(f"not a version {_VERSION} lbsync memory")
    out_since = data.get("out_since")
    held: Any = data.get("held_by_us")
    removing: Any = data.get("removing")
    weights = data.get("applied_weights")
    if not (isinstance(out_since, dict) and all(
            isinstance(t, int | float) and math.isfinite(t) for t in out_since.values())):
        raise ValueError("out_since is not a map of server names to times")
    for what, names in (("held_by_us", held), ("removing", removing)):
        if not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
            raise ValueError(f"{what} is not a list of server names")
    if not (isinstance(weights, dict) and all(
            type(w) is int and 0 <= w <= 256 for w in weights.values())):
        raise ValueError("applied_weights is not a map of server names to weights 0-256")
    return Kept({n: float(t) for n, t in out_since.items()}, frozenset(held),
                frozenset(removing), dict(weights))


def read(path: Path) -> Kept:
    """The memory a previous daemon left; an empty one, with one warning, when the file
    is damaged (a guess from a bad file could cut sessions, an empty memory cannot)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return Kept()
    except (OSError, UnicodeDecodeError) as e:
        log.warning("memory file %s unreadable, starting with an empty memory: %s", path, e)
        return Kept()
    try:
        return decode(text)
    except ValueError as e:  # json.JSONDecodeError is one
        log.warning("memory file %s damaged, starting with an empty memory: %s", path, e)
        return Kept()


def write(path: Path, kept: Kept) -> None:
    atomic_write(path, encode(kept), mode=0o600)


class Memory:
    """lbsync's holds, leave start times and weights, kept in step with HAProxy's answers
    and with the memory file. Times are the pass's monotonic `now`; `wall` converts them
    for the file."""

    def __init__(self, path: Path, wall: Callable[[], float]) -> None:
        self.path = path
        self.wall = wall
        # When lbsync first saw each server out of rotation: leaves time out from it.
        self.drain_started: dict[str, float] = {}
        self.held_by_us: set[str] = set()  # drains and maintenance lbsync set
        self.removing: set[str] = set()  # removals lbsync has sent
        self.applied_weights: dict[str, int] = {}
        self.saved: tuple[object, ...] | None = None  # what the memory file holds now
        self._failing = False
        # Read now, merged at the first pass: its times convert to that pass's clock.
        self._kept: Kept | None = read(path)

    def holds(self) -> Holds:
        return Holds(dict(self.drain_started), dict(self.applied_weights),
                     frozenset(self.held_by_us), frozenset(self.removing))

    def observe(self, actual: Sequence[ServerState], now: float) -> None:
        """Follow what HAProxy shows; the first call also merges the memory file."""
        if self._kept is not None:
            self._restore(self._kept, now)
            self._kept = None
        out = {s.name for s in actual if s.out_of_rotation}
        for name in out - self.drain_started.keys():
            self.drain_started[name] = now
        for name in self.drain_started.keys() - out:
            del self.drain_started[name]
        # A hold HAProxy no longer shows (set ready, or the server deleted by someone else)
        # is no longer lbsync's: a later hold by an operator must not be undone as ours.
        self.held_by_us &= out
        self.removing &= out
        names = {s.name for s in actual}
        for name in self.applied_weights.keys() - names:
            del self.applied_weights[name]
        for s in actual:
            self.applied_weights.setdefault(s.name, s.iweight)

    def start_removals(self, names: set[str], now: float) -> None:
        """On disk before the commands: a daemon stopped between `maint` and `del`
        finishes the removal when it starts again, and undoes it if the member is back."""
        self.removing |= names
        self.held_by_us |= names
        self.save(now)

    def record(self, plan: Plan, outcomes: Sequence[Outcome], now: float) -> None:
        """Remember what HAProxy accepted: the weights lbsync gave, the holds it set."""
        new_weights = {a.name: a.weight for a in plan.add}
        new_weights |= {u.name: u.weight for u in plan.weights}
        for o in outcomes:
            if o.error is not None:
                continue
            name, action = o.step.server, o.step.action
            if action in ("add", "weight"):
                self.applied_weights[name] = new_weights[name]
            elif action in ("maint", "drain"):
                self.held_by_us.add(name)
                # The timeouts count from the first hold: a suspect that then leaves
                # keeps its start.
                self.drain_started.setdefault(name, now)
            elif action == "undrain":
                self.held_by_us.discard(name)
                self.removing.discard(name)
            elif action in ("del", "kill"):
                self._forget(name)

    def _forget(self, name: str) -> None:
        self.held_by_us.discard(name)
        self.removing.discard(name)
        self.applied_weights.pop(name, None)
        self.drain_started.pop(name, None)

    def _restore(self, kept: Kept, now: float) -> None:
        """Merge what a previous daemon left; its wall-clock times onto this pass's clock."""
        wall = self.wall()
        for name, since in kept.out_since.items():
            self.drain_started[name] = now - max(0.0, wall - since)
        self.held_by_us |= kept.held_by_us
        self.removing |= kept.removing
        self.applied_weights.update(kept.applied_weights)
        if kept != Kept():
            log.info("memory file %s: holds=%s removing=%s", self.path,
                     ",".join(sorted(kept.held_by_us)) or "-",
                     ",".join(sorted(kept.removing)) or "-")

    def save(self, now: float) -> None:
        """Write the memory file when its content changed; a failure is warned about once
        in a row (lbsync goes on, and only a restart would lose what it holds)."""
        snapshot = (sorted(self.drain_started.items()), sorted(self.held_by_us),
                    sorted(self.removing), sorted(self.applied_weights.items()))
        if snapshot == self.saved:
            return
        wall = self.wall()
        kept = Kept({n: wall - (now - t) for n, t in self.drain_started.items()},
                    frozenset(self.held_by_us), frozenset(self.removing),
                    dict(self.applied_weights))
        try:
            write(self.path, kept)
        except OSError as e:
            if not self._failing:
                log.error("cannot write memory file %s (retrying): %s", self.path, e)
            self._failing = True
            return
        self._failing = False
        self.saved = tuple(snapshot)
