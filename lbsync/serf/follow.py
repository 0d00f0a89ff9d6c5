"""Keep following one Serf agent: its member-event stream plus a fast `members` poll.

The agent coalesces member events for about a second, while `members` shows a joiner
within milliseconds, so the poll is the quick path and the stream the record of what
happened (left vs failed). Both reach the caller on the follower's own thread, in
arrival order, so callbacks need no locking between them.

The agent's log is the doorbell: Serf logs `serf: EventMemberJoin: NAME ADDR` (Leave,
Failed, Update, Reap) the moment its member list changes, a second before the coalesced
event. Such a line makes the follower poll at once instead of at the next tick, at most
once per DOORBELL_GAP. Only the poll's list is believed; a lost or unparsed line costs
the wait for the next tick, nothing more.

With a `rejoin` hook (lbsync.serf.rejoin), a polled list that lacks members the caller
knows alive makes the follower ask the agent to join them before it delivers the list:
an agent restarted without its snapshot then knows its members again within one poll,
and the caller never sees them vanish.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from typing import TypeVar

from lbsync.model import Member, MemberEvent
from lbsync.serf.rejoin import GOSSIP_PORT, gossip_addr
from lbsync.serf.rpc import MEMBER_EVENT_TYPES, REAL_CLOCK, Clock, SerfError, SerfRPC

log = logging.getLogger(__name__)

BACKOFF_FIRST = 0.1
BACKOFF_MAX = 5.0
# How long the loop may sleep between checks that the connection is still up, when the
# poll interval is long.
_MAX_IDLE = 0.2
# The shortest time between two polls the doorbell asks for: in a join storm it rings
# for every member, and each poll is a whole member list for the agent to send.
DOORBELL_GAP = 0.02
# What a log line that rings the doorbell holds (lbsync.serf.follow's docstring).
DOORBELL_TEXT = "serf: EventMember"

_T = TypeVar("_T")
_WAKE = object()  # put on the event queue by stop() so the loop does not sleep on
_RING = object()  # put on the event queue when the agent logs a member change


class Follower:
    """A daemon thread that stays connected to a Serf agent and reports what it sees.

    `on_event` gets every member event from the stream; `on_members` gets the full member
    list every `poll_interval` seconds (and straight after each (re)connect, which is how
    events missed while disconnected are made up for). Exceptions from the callbacks are
    logged and do not stop the follower. `clock` is the time it and its connection see
    (its backoff pauses and reply waits), replaced in unit tests.
    """

    def __init__(
        self,
        host: str,
        port: int,
        on_event: Callable[[MemberEvent], None],
        on_members: Callable[[list[Member]], None],
        *,
        auth_key: str | None = None,
        poll_interval: float = 0.1,
        timeout: float = 5.0,
        types: str = MEMBER_EVENT_TYPES,
        rejoin: Callable[[list[Member]], list[Member]] | None = None,
        gossip_port: int = GOSSIP_PORT,
        clock: Clock = REAL_CLOCK,
    ) -> None:
        if poll_interval <= 0:
            raise ValueError(f"poll interval must be positive, not {poll_interval}")
        self.host = host
        self.port = port
        self.poll_interval = poll_interval
        self._on_event = on_event
        self._on_members = on_members
        self._auth_key = auth_key
        self._timeout = timeout
        self._types = types
        self._rejoin = rejoin
        self._gossip_port = gossip_port
        self._clock = clock  # also the connection's: its reply waits
        self._where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self._events: queue.Queue[object] = queue.Queue()
        self._stopping = threading.Event()
        self._lock = threading.Lock()  # guards _rpc against stop() racing a reconnect
        self._rpc: SerfRPC | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("Follower.start() called twice")
        self._thread = threading.Thread(
            target=self._run, name=f"serf-follow-{self._where}", daemon=True
        )
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop following: close the connection at once and wait for the thread."""
        self._stopping.set()
        self._events.put(_WAKE)
        with self._lock:
            rpc = self._rpc
        if rpc is not None:
            rpc.close()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    @property
    def connected(self) -> bool:
        rpc = self._rpc
        return rpc is not None and not rpc.closed

    # --- the thread ---

    def _run(self) -> None:
        delay = BACKOFF_FIRST
        outage_since: float | None = None
        ever_connected = False
        while not self._stopping.is_set():
            try:
                rpc = self._connect()
            except SerfError as exc:
                if self._stopping.is_set():
                    break
                if outage_since is None:
                    outage_since = self._clock.now()
                    log.warning("%s; retrying (backoff up to %g s)", exc, BACKOFF_MAX)
                self._clock.wait(self._stopping, delay)
                delay = min(delay * 2, BACKOFF_MAX)
                continue
            if outage_since is not None:
                log.info(
                    "serf agent at %s is back after %.1f s",
                    self._where, self._clock.now() - outage_since,
                )
            elif not ever_connected:
                log.info("following serf agent at %s", self._where)
            ever_connected = True
            delay = BACKOFF_FIRST
            outage_since = None
            try:
                reason = self._follow(rpc)
            finally:
                rpc.close()
                self._drain()
            if not self._stopping.is_set():
                outage_since = self._clock.now()
                log.warning(
                    "lost serf agent at %s (%s); reconnecting", self._where, reason
                )

    def _connect(self) -> SerfRPC:
        rpc = SerfRPC(self.host, self.port, self._auth_key, self._timeout, clock=self._clock)
        with self._lock:
            if self._stopping.is_set():
                raise SerfError("stopping")
            self._rpc = rpc
        rpc.connect()
        try:
            # The stream callback runs on the RPC reader thread; hand events over rather
            # than run user code there.
            rpc.stream(self._types, self._events.put)
            self._listen_for_doorbell(rpc)
        except SerfError:
            rpc.close()
            raise
        return rpc

    def _listen_for_doorbell(self, rpc: SerfRPC) -> None:
        def on_line(line: str) -> None:  # the RPC reader thread: only hand over
            if DOORBELL_TEXT in line:
                self._events.put(_RING)

        try:
            rpc.monitor("INFO", on_line)
        except SerfError as exc:
            if rpc.closed:
                raise
            # Not fatal: the poll alone notices changes, one tick later.
            log.warning("serf agent at %s gives no log stream (%s); member changes are "
                        "noticed at the next poll only", self._where, exc)

    def _follow(self, rpc: SerfRPC) -> str:
        """Deliver events and polls until the connection drops; returns why it did."""
        next_poll = last_poll = self._clock.now()
        while not self._stopping.is_set():
            if rpc.closed:
                return rpc.close_reason or "connection closed"
            wait = next_poll - self._clock.now()
            if wait <= 0:
                last_poll = self._clock.now()
                try:
                    members = self._rejoined(rpc, rpc.members())
                except SerfError as exc:
                    return str(exc)
                self._deliver(self._on_members, members)
                # Skip missed ticks instead of bursting to catch up after a slow callback.
                next_poll = max(next_poll + self.poll_interval, self._clock.now())
                continue
            try:
                item = self._events.get(timeout=min(wait, _MAX_IDLE))
            except queue.Empty:
                continue
            if isinstance(item, MemberEvent):
                self._deliver(self._on_event, item)
            elif item is _RING:
                next_poll = min(next_poll, max(self._clock.now(), last_poll + DOORBELL_GAP))
        return "stopped"

    def _rejoined(self, rpc: SerfRPC, members: list[Member]) -> list[Member]:
        """`members`, or, when the hook names members the agent forgot, the list after
        asking the agent to join them (one log line either way it goes)."""
        if self._rejoin is None:
            return members
        try:
            missing = self._rejoin(members)
        except Exception:
            log.exception("serf follower rejoin hook failed")
            return members
        if not missing:
            return members
        addrs = [gossip_addr(m.addr, self._gossip_port) for m in missing]
        names = ", ".join(m.name for m in missing)
        try:
            joined = rpc.join(addrs)
        except SerfError as exc:
            if rpc.closed:
                raise
            log.warning("serf agent at %s does not know %s (alive in the registry); "
                        "join %s failed: %s", self._where, names, " ".join(addrs), exc)
            return members
        log.warning("serf agent at %s did not know %s (alive in the registry): joined %d "
                    "of %d (%s)", self._where, names, joined, len(addrs), " ".join(addrs))
        return rpc.members()

    def _drain(self) -> None:
        """Deliver events that arrived before the connection dropped: they happened, and
        they must not land after the next connection's first member list."""
        while True:
            try:
                item = self._events.get_nowait()
            except queue.Empty:
                return
            if isinstance(item, MemberEvent) and not self._stopping.is_set():
                self._deliver(self._on_event, item)

    @staticmethod
    def _deliver(callback: Callable[[_T], None], value: _T) -> None:
        try:
            callback(value)
        except Exception:
            log.exception("serf follower callback %r failed", callback)
