"""The daemon's loop: drain the queue, update the registry, then reconcile once.

Threads (the Serf follower, the registry watch) only feed one queue. `Loop.handle(items,
now)` takes one drained batch: stream events and registry changes update the registry,
the latest members snapshot re-syncs it (duplicates skipped), and one reconcile pass
follows, so a burst of events costs one pass. A timer (`--resync-interval`) reconciles
and re-syncs the registry from the last snapshot anyway, which heals lost events; while a
drain or a reload is pending (or a pass failed) the loop comes back every BUSY_INTERVAL.
With TLS on, the certificate files are polled every CERT_POLL_INTERVAL too
(lbsync.certwatch: a stat each, HAProxy asked only when one changed).

The clock is injected: `run()` wires the real one and the queue, tests drive `handle` and
`tick` with plain numbers.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from .metrics import Metrics
from .model import LbsyncError, Member, MemberEvent, Refusal
from .reconcile import TickResult
from .registry import Registry

log = logging.getLogger("lbsync.loop")

BUSY_INTERVAL = 0.25  # while a drain or a reload is pending, or after a failed pass
IDLE_INTERVAL = 1.0  # the longest wait for an event (so a stop is seen soon)
CERT_POLL_INTERVAL = 1.0  # how often the certificate files are looked at (a stat each)


@dataclass(frozen=True)
class Snapshot:
    """Serf's whole member list, as the follower's poll saw it."""

    members: list[Member]


class _Touched:
    """The registry folder changed (for example `lbsync handle` wrote a member)."""


TOUCHED = _Touched()


class Clock(Protocol):
    def now(self) -> float: ...  # monotonic seconds: timers and durations
    def wall(self) -> float: ...  # seconds since the epoch: registry and metrics times


class RealClock:
    def now(self) -> float:
        return time.monotonic()

    def wall(self) -> float:
        return time.time()


class CertPoll(Protocol):
    """The certificate files' watch (lbsync.certwatch.CertWatch)."""

    def poll(self) -> object: ...


class Pass(Protocol):
    """One reconcile pass (lbsync.reconcile.Reconciler)."""

    def tick(self, now: float | None = None) -> TickResult: ...


_Key = tuple[tuple[str, str, str, tuple[tuple[str, str], ...]], ...]


def snapshot_key(members: list[Member]) -> _Key:
    return tuple(sorted((m.name, m.addr, str(m.status), tuple(sorted(m.tags.items())))
                        for m in members))


class Loop:
    def __init__(self, registry: Registry, reconciler: Pass, metrics: Metrics, clock: Clock,
                 *, serf: bool, resync_interval: float, certs: CertPoll | None = None,
                 ) -> None:
        self.registry = registry
        self.reconciler = reconciler
        self.metrics = metrics
        self.clock = clock
        self.serf = serf  # with Serf's poll on, the poll is the authority on status
        self.resync_interval = resync_interval
        self.last_key: _Key | None = None
        self.last_snapshot: Snapshot | None = None
        self.next_resync = 0.0  # reconcile at once on start
        self.busy = False
        self.certs = certs
        self.next_cert_poll = 0.0

    def timeout(self, now: float) -> float:
        """How long to wait for the next event before `tick`."""
        wait = min(BUSY_INTERVAL if self.busy else IDLE_INTERVAL,
                   max(0.0, self.next_resync - now))
        if self.certs is not None:
            wait = min(wait, max(0.0, self.next_cert_poll - now))
        return wait

    def tick(self, now: float) -> TickResult | None:
        """No event came: reconcile if the timer or a pending drain asks for it."""
        return self.handle([], now)

    def handle(self, items: Sequence[object], now: float) -> TickResult | None:
        """One drained batch; what the reconcile pass did, or None when none ran (or it
        failed)."""
        changed = touched = False
        snapshot: Snapshot | None = None
        for item in items:
            if isinstance(item, MemberEvent):
                changed |= self._stream_event(item)
            elif isinstance(item, Snapshot):
                snapshot = item
            elif item is TOUCHED:
                changed = touched = True
        resync = now >= self.next_resync
        if snapshot is not None:
            self.last_snapshot = snapshot
        elif resync or touched:
            # The poll's latest list is the truth: a resync, or a registry file changed
            # behind lbsync's back (damaged, deleted), is answered with it. A resync
            # rarely finds a fresh list in its batch, so without this it healed nothing.
            snapshot = self.last_snapshot
        if snapshot is not None:
            key = snapshot_key(snapshot.members)
            if key != self.last_key or resync or touched:
                changed |= self._sync(snapshot)
                self.last_key = key
        result = None
        if changed or self.busy or resync:
            result = self._reconcile(now)
        if resync:
            self.next_resync = now + self.resync_interval
        if self.certs is not None and now >= self.next_cert_poll:
            self._poll_certs()
            self.next_cert_poll = now + CERT_POLL_INTERVAL
        return result

    def _poll_certs(self) -> None:
        assert self.certs is not None
        try:
            self.certs.poll()
        except Exception:
            # As for a pass: a bug here must not stop the load balancer.
            log.exception("certificate poll crashed; retrying")

    def run(self, q: queue.Queue[object], stop: threading.Event) -> None:
        """Until `stop` is set: wait for events (or the timer), drain the queue, handle."""
        while not stop.is_set():
            items: list[object] = []
            try:
                items.append(q.get(timeout=self.timeout(self.clock.now())))
                while True:
                    items.append(q.get_nowait())
            except queue.Empty:
                pass
            if stop.is_set():
                return
            self.handle(items, self.clock.now())

    def _stream_event(self, event: MemberEvent) -> bool:
        # The poll (when on) is the authority on status; the stream only hurries.
        names, refused = self.registry.apply_event(event, revive=not self.serf)
        for m in event.members:
            # The poll usually saw it first; repeat it only when it is news.
            log.log(logging.INFO if m.name in names else logging.DEBUG,
                    "%s member=%s addr=%s source=stream", event.kind, m.name, m.addr)
            if m.name in names:
                self.metrics.member_event(str(event.kind))
        self._refused(refused)
        self.last_key = None  # the stream lags the poll: let the next poll correct it
        return bool(names)

    def _sync(self, snapshot: Snapshot) -> bool:
        names, refused = self.registry.sync(snapshot.members, self.clock.wall())
        self._refused(refused)
        for name in names:
            stored = self.registry.get(name)
            kind = stored.last_event if stored else "member-reap"
            log.info("%s member=%s addr=%s source=members", kind, name,
                     stored.addr if stored else "-")
            self.metrics.member_event(kind)
        return bool(names)

    def _reconcile(self, now: float) -> TickResult | None:
        started = self.clock.now()
        try:
            result = self.reconciler.tick(now)
        except LbsyncError as e:
            log.error("reconcile failed: %s", e)
        except Exception:
            # A bug must not stop the load balancer from following the fleet: log it
            # with its traceback and try again on the next pass.
            log.exception("reconcile crashed; retrying")
        else:
            self.busy = result.busy
            self.metrics.observe_pass(result, self.clock.now() - started, self.clock.wall())
            return result
        self.busy = True  # the crash policy: never stop, retry after BUSY_INTERVAL
        self.metrics.failed_pass(self.clock.now() - started)
        return None

    def _refused(self, refused: list[Refusal]) -> None:
        for r in refused:
            log.warning("refused member=%r: %s", r.member, r.reason)
        self.metrics.refused(refused)
