"""The node registry: a folder with one JSON file per Serf member.

It is the meeting point of the two ways members arrive (the daemon's RPC stream and
`lbsync handle` run by `serf agent -event-handler`), it survives restarts, and a person
can read it with `cat /nodes/*.json`. Files are written atomically and only when a fact
about the member changed, so the 0.1 s members poll costs no disk writes at rest.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .files import atomic_write
from .model import EVENT_STATUS, FORGETS, EventKind, Member, MemberEvent, MemberStatus, Refusal
from .validate import name_problem

log = logging.getLogger("lbsync.registry")

# What a status change seen by the members poll is called in `last_event`.
_STATUS_EVENT = {
    MemberStatus.ALIVE: "member-join",
    MemberStatus.LEAVING: "member-leaving",
    MemberStatus.LEFT: "member-leave",
    MemberStatus.FAILED: "member-failed",
    MemberStatus.NONE: "member-unknown",
}


def to_json(m: Member) -> dict[str, Any]:
    port = m.tags.get("port", "")
    return {
        "name": m.name,
        "address": m.addr,
        # The service port HAProxy will use, when the member tags one (else the default).
        "port": int(port) if port.isascii() and port.isdigit() else None,
        "tags": dict(sorted(m.tags.items())),
        "status": str(m.status),
        "last_event": m.last_event,
        "time": round(m.time, 3),
    }


def from_json(data: Any) -> Member:
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    tags = data.get("tags") or {}
    if not isinstance(tags, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in tags.items()
    ):
        raise ValueError("tags must map strings to strings")
    return Member(
        name=str(data["name"]),
        addr=str(data["address"]),
        tags=tags,
        status=MemberStatus(data.get("status", "none")),
        last_event=str(data.get("last_event", "")),
        time=float(data.get("time", 0.0)),
    )


def _version(st: os.stat_result) -> tuple[int, int, int]:
    """What tells one version of a registry file from the next: an atomic write is a new
    inode, so a rewrite within the clock's granularity is still told apart."""
    return (st.st_ino, st.st_mtime_ns, st.st_size)


def _same_facts(a: Member, b: Member) -> bool:
    return (a.addr, dict(a.tags), a.status) == (b.addr, dict(b.tags), b.status)


class Registry:
    """The registry folder. Not thread-safe: the reconcile loop is its only writer."""

    def __init__(self, root: Path) -> None:
        self.root = root
        # path -> (its mtime and size, the reason) last warned about: a damaged file is
        # reported once per change, not at every resync.
        self._warned: dict[Path, tuple[tuple[int, int], str]] = {}
        # Names whose file the last load() could not read: lbsync must not take their
        # servers out on the word of a damaged file (see lbsync.plan.hold).
        self.damaged: frozenset[str] = frozenset()
        # path -> (its inode, mtime and size, the member it held): a file is parsed again
        # only when one of those changed. Every pass loads the whole folder; in a 200-member
        # storm on 2 vCPU, parsing every file at every pass took a quarter of a second.
        self._parsed: dict[Path, tuple[tuple[int, int, int], Member]] = {}

    def _read(self, path: Path) -> Member:
        """The member in `path` (OSError, ValueError, KeyError or TypeError when it cannot
        be read); unchanged files come from the cache. An atomic write is a new inode, so
        a rewrite within the clock's granularity is still seen."""
        version = _version(path.stat())
        cached = self._parsed.get(path)
        if cached is not None and cached[0] == version:
            return cached[1]
        m = from_json(json.loads(path.read_text(encoding="utf-8")))
        self._parsed[path] = (version, m)
        return m

    def path(self, name: str) -> Path:
        return self.root / f"{name}.json"

    def load(self) -> dict[str, Member]:
        """Every readable member; a damaged file is logged (once per change) and skipped,
        never deleted."""
        members: dict[str, Member] = {}
        bad: set[Path] = set()
        try:
            listed = os.listdir(self.root)
        except (FileNotFoundError, NotADirectoryError):
            listed = []
        # Names, not Paths, sorted (as glob's "*.json": no dot files): sorting Path objects
        # showed in a storm's profile.
        paths = [self.root / n for n in sorted(listed)
                 if n.endswith(".json") and not n.startswith(".")]
        for path in paths:
            try:
                m = self._read(path)
            except (OSError, ValueError, KeyError, TypeError) as e:
                self._skip(path, f"skipping unreadable {path}: {e}")
                bad.add(path)
                continue
            if m.name != path.stem or name_problem(m.name):
                self._skip(path, f"skipping {path}: name does not match the file")
                bad.add(path)
                continue
            members[m.name] = m
        for path in set(self._warned) - bad:  # mended or gone: a new fault is news again
            del self._warned[path]
        for path in set(self._parsed) - set(paths):
            del self._parsed[path]
        self.damaged = frozenset(p.stem for p in bad if not name_problem(p.stem))
        return members

    def _skip(self, path: Path, reason: str) -> None:
        try:
            st = path.stat()
            version = (st.st_mtime_ns, st.st_size)
        except OSError:
            version = (0, 0)
        if self._warned.get(path) != (version, reason):
            self._warned[path] = (version, reason)
            log.warning("registry: %s", reason)

    def put(self, member: Member) -> bool:
        """Store one member; False when nothing but the time would change."""
        old = self.get(member.name)
        if old is not None and _same_facts(old, member):
            return False
        # No fsync: the daemon rebuilds every file from Serf's `members`, and a file a power
        # cut left empty reads as damaged (its server is held) until the next sync rewrites
        # it. With 500 agents on 2 vCPU, 200 fsynced writes took 48 s of a storm's first pass.
        path, data = self.path(member.name), to_json(member)
        # The facts differ, so the text does: no read to compare it again.
        atomic_write(path, json.dumps(data, indent=2) + "\n", durable=False, compare=False)
        # What a read would give, without reading it back.
        self._parsed[path] = (_version(path.stat()), from_json(data))
        return True

    def get(self, name: str) -> Member | None:
        try:
            return self._read(self.path(name))
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def delete(self, name: str) -> bool:
        self._parsed.pop(self.path(name), None)
        try:
            os.unlink(self.path(name))
        except FileNotFoundError:
            return False
        return True

    def apply_event(self, event: MemberEvent,
                    revive: bool = True) -> tuple[list[str], list[Refusal]]:
        """Record one Serf event; returns the names that changed and the refused members.

        With `revive=False` (the daemon, whose `members` poll sees every status at once), a
        join or update never brings back a member recorded as leaving, left or failed: Serf
        delivers `member-join` about a second late (coalescing), often after the poll saw
        the same member leave, and obeying it re-added a leaving server for 0.1 s. A member
        that really comes back is seen alive by the next poll.
        """
        changed: list[str] = []
        refused: list[Refusal] = []
        for m in event.members:
            if problem := name_problem(m.name):
                refused.append(Refusal(m.name, problem))
                continue
            if event.kind in FORGETS:  # reaped: Serf forgot it, so does lbsync
                if self.delete(m.name):
                    changed.append(m.name)
                continue
            if not revive and event.kind in (EventKind.JOIN, EventKind.UPDATE):
                old = self.get(m.name)
                if old is not None and old.status != MemberStatus.ALIVE:
                    log.debug("registry: %s for %s ignored: recorded %s since", event.kind,
                              m.name, old.status)
                    continue
            stored = Member(m.name, m.addr, dict(m.tags), EVENT_STATUS[event.kind],
                            str(event.kind), m.time)
            if self.put(stored):
                changed.append(m.name)
        return changed, refused

    def sync(self, members: Iterable[Member], now: float) -> tuple[list[str], list[Refusal]]:
        """Make the registry equal to a full `members` answer.

        A member Serf no longer lists was reaped by Serf, so its file goes too.
        """
        changed: list[str] = []
        refused: list[Refusal] = []
        seen: set[str] = set()
        current = self.load()
        for m in members:
            if problem := name_problem(m.name):
                refused.append(Refusal(m.name, problem))
                continue
            seen.add(m.name)
            old = current.get(m.name)
            if old is not None and _same_facts(old, m):
                continue
            event = _STATUS_EVENT[m.status] if old is None or old.status != m.status else (
                "member-update")
            if self.put(Member(m.name, m.addr, dict(m.tags), m.status, event, now)):
                changed.append(m.name)
        for name in current.keys() - seen:
            if self.delete(name):
                changed.append(name)
        return changed, refused
