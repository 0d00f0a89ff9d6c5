"""Drift between the three views of the fleet: Serf, HAProxy and haproxy.cfg (pure); and
the certificates HAProxy serves, against --cert-expiry-margin.

It reuses the plan: if lbsync would still do something for a server, that server has
drifted; a server that only waits for its sessions (or is kept so the backend is not
emptied) has not.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from .desired import desired_state
from .haproxy.certs import CertInfo
from .model import Member, ServerState
from .plan import Holds, Timeouts, make_plan
from .render import split_servers
from .settings import Settings

_SERVER_LINE = re.compile(r"^\s*server\s+(\S+)\s")


@dataclass(frozen=True)
class Row:
    name: str
    serf: str  # Serf status, or "-" when Serf does not know the name
    haproxy: str  # UP, DOWN, MAINT, DRAIN or "-"
    in_config: bool
    note: str  # what lbsync is doing, or the drift
    drift: bool
    links: str = "-"  # the node's router links, UP/WANTED (its `links` tag), or "-"


def config_servers(text: str) -> set[str]:
    """Server names between the lbsync markers of a rendered haproxy.cfg."""
    _, inside = split_servers(text)
    return {m.group(1) for line in inside if (m := _SERVER_LINE.match(line))}


def status_rows(
    members: Mapping[str, Member], actual: Sequence[ServerState], in_config: set[str],
    settings: Settings, version: tuple[int, ...],
) -> list[Row]:
    desired = desired_state(members, settings, version)
    plan = make_plan(
        actual, desired,
        # Weights move with agent-checks; status compares membership, not weights.
        Holds(applied_weights={n: s.weight for n, s in desired.servers.items()}),
        # No clock here: a failed member whose check still passes waits (not drift), one
        # whose check says DOWN too should be gone (drift).
        Timeouts(drain=float("inf")),
        now=0.0,
    )
    notes: dict[str, tuple[str, bool]] = {}
    for s in plan.add:
        notes[s.name] = ("member is alive but not in HAProxy", True)
    for label, group, drift in (
        ("draining although alive", plan.undrain, True),
        ("leaving but not in maintenance", plan.maint, True),
        ("drained but not removed", plan.remove, True),
        ("failed but still in HAProxy", (*plan.suspect, *plan.kill), True),
        ("leaving: waiting for its sessions to end", plan.waiting, False),
        ("kept: the last servers of the backend", plan.kept, False),
    ):
        for name in group:
            notes[name] = (label, drift)
    for name in plan.waiting:
        if name in desired.failed:
            notes[name] = ("failed in Serf, HAProxy's check passes: sessions kept "
                           "(at most --failed-timeout)", False)
    for name in plan.kept:
        if name not in members:  # e.g. a restarted Serf agent that lost its member list
            notes[name] = ("Serf does not know it; kept: the last servers of the backend", True)
    for a in plan.addrs:
        notes[a.name] = (f"HAProxy has another address than {a.addr}:{a.port}", True)
    for cur in actual:
        # lbsync leaves an operator's hold, or the one a stopping node's agent-check set
        # (`maint`), alone: not drift.
        if cur.name in desired.servers and cur.name not in notes and (
                cur.in_maint or cur.draining):
            what = "maintenance" if cur.in_maint else "draining"
            notes[cur.name] = (f"{what} set outside lbsync (operator or agent-check)", False)
    for r in desired.refused:
        # A refused member that still serves is drained by the plan: keep that drift.
        old, drift = notes.get(r.member, ("", False))
        notes[r.member] = (f"refused: {r.reason}" + (f"; {old}" if old else ""), drift)

    have = {s.name: s for s in actual}
    names = set(have) | in_config | set(desired.servers) | desired.leaving | desired.failed
    rows: list[Row] = []
    for name in sorted(names | {r.member for r in desired.refused}):
        note, drift = notes.get(name, ("ok", False))
        if (name in have) != (name in in_config):
            where = "haproxy.cfg lacks it" if name in have else "only haproxy.cfg has it"
            note, drift = (where if note == "ok" else f"{note}; {where}"), True
        m = members.get(name)
        state = have[name].state_word if name in have else "-"
        links = m.tags.get("links", "-") if m else "-"
        rows.append(Row(name, str(m.status) if m else "-", state, name in in_config, note, drift,
                        links))
    return rows


def format_table(rows: Sequence[Row]) -> str:
    header = ("MEMBER", "SERF", "HAPROXY", "CONFIG", "LINKS", "NOTE")
    body = [(r.name, r.serf, r.haproxy, "yes" if r.in_config else "no", r.links,
             ("DRIFT: " if r.drift else "") + r.note) for r in rows]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *body, strict=False)]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(line, widths, strict=False)).rstrip()
                     for line in (header, *body))


# --- certificates ------------------------------------------------------------------------

DAY = 86400.0


@dataclass(frozen=True)
class CertRow:
    file: str
    subject: str
    names: str  # the subjectAltName DNS names HAProxy lists, or "-"
    not_after: str  # YYYY-MM-DD HH:MM UTC
    days: float  # until notAfter (negative: expired)
    expiring: bool  # within the margin (or expired)

    @property
    def problem(self) -> str:
        """`status --check`'s line for it."""
        when = (f"expired on {self.not_after}" if self.days <= 0
                else f"expires on {self.not_after}, in {self.days:.1f} days")
        return f"certificate {self.file} ({self.subject}) {when}"


def cert_rows(infos: Sequence[CertInfo], now: datetime, margin_days: int) -> list[CertRow]:
    """The certificates HAProxy serves, each with its time left against the margin
    (--cert-expiry-margin)."""
    rows = []
    for info in sorted(infos, key=lambda i: i.filename):
        days = info.expires_in(now) / DAY
        rows.append(CertRow(info.filename, info.subject, ",".join(info.dns_names) or "-",
                            f"{info.not_after:%Y-%m-%d %H:%M} UTC", days,
                            days <= margin_days))
    return rows


def format_certs(rows: Sequence[CertRow], margin_days: int) -> str:
    header = ("CERTIFICATE", "SUBJECT", "NAMES", "NOT AFTER", "NOTE")
    body = [(r.file, r.subject, r.names, r.not_after,
             ("EXPIRED" if r.days <= 0 else f"EXPIRES in {r.days:.0f} days (margin "
              f"{margin_days})") if r.expiring else f"ok, {r.days:.0f} days left")
            for r in rows]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *body, strict=False)]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(line, widths, strict=False)).rstrip()
                     for line in (header, *body))
