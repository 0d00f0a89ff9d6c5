"""The part of lbsync's memory that must outlive `lbsync agent`: a small JSON file.

HAProxy's `show servers state` says that a server is in drain or maintenance, not who put
it there. lbsync undoes only its own holds, and finishes only its own removals, so after a
restart it must still know which holds were its own, when each leave began (the
`--drain-timeout` counts from there, not from the restart) and the weights it gave. The
file lives beside the server-state file (`lbsync-memory.json`) and is written atomically.

Times are monotonic in the agent and wall-clock in the file: a monotonic clock means
nothing to the next process.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .files import atomic_write

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
    """The memory a previous agent left; an empty one, with one warning, when the file
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
