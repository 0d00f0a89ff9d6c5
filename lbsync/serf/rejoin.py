"""Notice that the Serf agent forgot members the registry knows alive, so they are rejoined.

A Serf agent that restarts without its snapshot (deleted, damaged, or a fresh container)
starts with no members but itself. The members notice the agent is back only when they
retry a failed member, about 30 s later, and all that time joins, leaves and crashes are
invisible to lbsync. The registry still holds every member's address, so lbsync asks the
agent to `join` them, which takes milliseconds. Serf's own snapshot with -rejoin does the
same when the snapshot is there; this covers the case when it is not.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping

from lbsync.model import Member, MemberStatus

# Serf's gossip port (DefaultBindPort). The registry keeps a member's IP, not its gossip
# port; every agent lbsync starts (local cluster, images, the test rig) binds this one.
GOSSIP_PORT = 7946
# At most one join this often: a member the registry wrongly believes alive, or an agent
# that keeps restarting, must not turn into a join on every 0.1 s poll.
REJOIN_INTERVAL = 3.0


def forgotten(known: Mapping[str, Member], listed: Iterable[Member]) -> list[Member]:
    """Members `known` as alive (the registry) that Serf does not list at all.

    A member Serf lists in any status is not forgotten: failed ones Serf reconnects to
    itself, left ones are meant to be gone. A member alive in the registry but missing
    from the list is one Serf lost: it reaps only members that left or failed long ago.
    """
    names = {m.name for m in listed}
    return [m for name, m in sorted(known.items())
            if name not in names and m.status == MemberStatus.ALIVE and m.addr]


def gossip_addr(addr: str, port: int = GOSSIP_PORT) -> str:
    """`host:port` as Serf's `join` takes it (IPv6 in brackets)."""
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"


class Rejoin:
    """For each member list the follower polls: the members to join now, usually none.

    The registry is read only when the set of listed names changes (a restart of the
    agent, or of lbsync, always changes it), so the 10-per-second poll costs nothing.
    A list that only grew from one found complete is not read against the registry
    either: nothing listed before is missing from it, and what the registry learned since
    came from these lists. In a join storm the list grows at every poll, and reading the
    whole registry each time held the poll back by 0.2-0.6 s on 2 vCPU.
    `clock` is injected for the tests.
    """

    def __init__(self, known: Callable[[], Mapping[str, Member]],
                 interval: float = REJOIN_INTERVAL,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._known = known
        self._interval = interval
        self._clock = clock
        self._checked: frozenset[str] | None = None  # the names of the last list looked at
        self._complete = False  # whether that list lacked no member the registry knew
        self._last_join: float | None = None

    def __call__(self, members: list[Member]) -> list[Member]:
        names = frozenset(m.name for m in members)
        if names == self._checked:
            return []
        if self._complete and self._checked is not None and names > self._checked:
            self._checked = names
            return []
        missing = forgotten(self._known(), members)
        now = self._clock()
        if missing and self._last_join is not None and now - self._last_join < self._interval:
            return []  # not marked checked: looked at again once the interval has passed
        self._checked = names
        self._complete = not missing
        if missing:
            self._last_join = now
        return missing
