"""Which members lbsync asks a forgetful Serf agent to join, and how often (pure)."""

from __future__ import annotations

from lbsync.model import Member, MemberStatus
from lbsync.serf.rejoin import Rejoin, forgotten, gossip_addr


def m(name: str, addr: str = "", status: MemberStatus = MemberStatus.ALIVE) -> Member:
    return Member(name, addr or f"10.0.0.{len(name)}", {}, status)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def registry(*members: Member) -> dict[str, Member]:
    return {x.name: x for x in members}


def test_forgotten_are_alive_registry_members_serf_does_not_list() -> None:
    known = registry(m("lb"), m("a"), m("b"), m("gone", status=MemberStatus.LEFT),
                     m("dead", status=MemberStatus.FAILED), Member("noaddr", ""))
    # b is listed (failed: Serf reconnects to it itself), a is not listed at all.
    listed = [m("lb"), m("b", status=MemberStatus.FAILED)]
    assert [x.name for x in forgotten(known, listed)] == ["a"]


def test_gossip_addr_brackets_ipv6() -> None:
    assert gossip_addr("10.0.0.1") == "10.0.0.1:7946"
    assert gossip_addr("fd00::1", 7000) == "[fd00::1]:7000"


def test_rejoin_names_the_forgotten_once_per_change_of_the_list() -> None:
    reads: list[int] = []
    known = registry(m("lb"), m("a"), m("b"))

    def load() -> dict[str, Member]:
        reads.append(1)
        return known

    clock = Clock()
    rejoin = Rejoin(load, interval=3.0, clock=clock)
    assert rejoin([m("lb"), m("a"), m("b")]) == []  # the first list is always looked at
    assert len(reads) == 1
    assert rejoin([m("lb"), m("a"), m("b")]) == []  # the same names: no registry read
    assert len(reads) == 1
    clock.now += 10
    assert [x.name for x in rejoin([m("lb")])] == ["a", "b"]  # the agent restarted
    assert rejoin([m("lb")]) == []  # the same list again (the join failed): not again
    assert len(reads) == 2


def test_rejoin_is_rate_limited_and_looks_again_after_the_interval() -> None:
    known = registry(m("lb"), m("a"), m("b"))
    clock = Clock()
    rejoin = Rejoin(lambda: known, interval=3.0, clock=clock)
    assert [x.name for x in rejoin([m("lb"), m("b")])] == ["a"]
    clock.now += 1
    assert rejoin([m("lb")]) == []  # b forgotten too, but a join was 1 s ago
    clock.now += 1
    assert rejoin([m("lb")]) == []
    clock.now += 1.5
    assert [x.name for x in rejoin([m("lb")])] == ["a", "b"]


def test_nothing_to_join_when_the_registry_agrees() -> None:
    rejoin = Rejoin(lambda: registry(m("lb"), m("a", status=MemberStatus.LEFT)), clock=Clock())
    assert rejoin([m("lb")]) == []


def test_a_list_that_only_grows_from_a_complete_one_is_not_read_against_the_registry() -> None:
    reads: list[int] = []
    known = registry(m("lb"), m("a"))

    def load() -> dict[str, Member]:
        reads.append(1)
        return known

    rejoin = Rejoin(load, interval=3.0, clock=Clock())
    assert rejoin([m("lb"), m("a")]) == []
    for grown in ("b", "c", "d"):  # a join storm: one more member at each poll
        known[grown] = m(grown)
        assert rejoin([m("lb"), m("a"), *(m(x) for x in "bcd"[:"bcd".index(grown) + 1])]) == []
    assert len(reads) == 1, "a growing list is not checked"
    # A list that lost a member is looked at again, and finds what it lacks.
    assert [x.name for x in rejoin([m("lb"), m("b"), m("c"), m("d")])] == ["a"]
    assert len(reads) == 2


def test_a_list_that_grows_from_an_incomplete_one_is_still_checked() -> None:
    known = registry(m("lb"), m("a"), m("b"))
    clock = Clock()
    rejoin = Rejoin(lambda: known, interval=3.0, clock=clock)
    assert [x.name for x in rejoin([m("lb")])] == ["a", "b"]
    clock.now += 5
    assert [x.name for x in rejoin([m("lb"), m("a")])] == ["b"], "b is still missing"
