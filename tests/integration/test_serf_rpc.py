"""SerfRPC, Follower and the handler parser against real `serf agent` processes."""

from __future__ import annotations

import logging
import queue
import stat
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from serf_fixtures import StartAgent

from lbsync.model import EventKind, Member, MemberEvent, MemberStatus
from lbsync.serf.follow import DOORBELL_TEXT, Follower
from lbsync.serf.handler import parse_handler_input
from lbsync.serf.rpc import MEMBER_EVENT_TYPES, SerfError, SerfRPC

pytestmark = pytest.mark.integration

EDGE = {"role": "edge", "port": "8080"}


def wait_until(check: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


def wait_event(
    events: queue.Queue[MemberEvent], kind: EventKind, name: str, timeout: float
) -> Member:
    """The member `name` from the first `kind` event that names it."""
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            pytest.fail(f"no {kind.value} event for {name} within {timeout} s")
        try:
            event = events.get(timeout=left)
        except queue.Empty:
            continue
        for member in event.members:
            if event.kind is kind and member.name == name:
                return member


def by_name(rpc: SerfRPC) -> dict[str, Member]:
    return {m.name: m for m in rpc.members()}


def test_handshake_and_members_list_a_second_agent(serf_agents: StartAgent) -> None:
    a1 = serf_agents("a1", tags=EDGE)
    with a1.rpc() as rpc:
        assert list(by_name(rpc)) == ["a1"]
        a2 = serf_agents("a2", join=a1, tags={**EDGE, "weight": "50"})
        wait_until(lambda: "a2" in by_name(rpc), 5, "a2 in a1's members")
        members = by_name(rpc)
    assert members["a1"].addr == a1.ip
    assert members["a2"].addr == a2.ip
    assert dict(members["a2"].tags) == {"role": "edge", "port": "8080", "weight": "50"}
    assert members["a2"].status is MemberStatus.ALIVE
    assert rpc.closed


def test_auth_key_accepted_and_refused(serf_agents: StartAgent) -> None:
    a1 = serf_agents("a1", auth_key="s3cret")
    with a1.rpc() as rpc:
        assert list(by_name(rpc)) == ["a1"]
    with pytest.raises(SerfError, match="refused the RPC auth key"):
        SerfRPC(a1.ip, a1.rpc_port, auth_key="wrong").connect()
    with pytest.raises(SerfError, match="requires an RPC auth key"):
        SerfRPC(a1.ip, a1.rpc_port).connect()


def test_auth_key_sent_to_an_agent_without_one(serf_agents: StartAgent) -> None:
    a1 = serf_agents("a1")
    with pytest.raises(SerfError, match="refused the RPC auth key"):
        SerfRPC(a1.ip, a1.rpc_port, auth_key="unneeded").connect()


def test_stream_join_then_leave(serf_agents: StartAgent) -> None:
    a1 = serf_agents("a1", tags=EDGE)
    events: queue.Queue[MemberEvent] = queue.Queue()
    with a1.rpc() as rpc:
        rpc.stream(MEMBER_EVENT_TYPES, events.put)
        a2 = serf_agents("a2", join=a1, tags=EDGE)
        joined = wait_event(events, EventKind.JOIN, "a2", 10)
        assert (joined.addr, joined.status) == (a2.ip, MemberStatus.ALIVE)
        assert joined.last_event == "member-join"
        with a2.rpc() as rpc2:
            rpc2.leave()
            # The agent shuts down after a leave, taking the connection with it.
            assert rpc2.wait_closed(10)
        left = wait_event(events, EventKind.LEAVE, "a2", 15)
        assert left.status is MemberStatus.LEFT
        assert by_name(rpc)["a2"].status is MemberStatus.LEFT
    assert a2.wait_exit(10) == 0


def test_the_log_names_each_member_change_once_members_shows_it(
    serf_agents: StartAgent,
) -> None:
    # The follower's doorbell (lbsync.serf.follow) rests on this: Serf logs
    # "serf: EventMember<Kind>: NAME ..." when, not before, `members` shows the change.
    a1 = serf_agents("a1", tags=EDGE)
    lines: queue.Queue[str] = queue.Queue()
    seen: list[str] = []

    def rung(kind: str) -> None:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                line = lines.get(timeout=0.2)
            except queue.Empty:
                continue
            seen.append(line)
            if f"{DOORBELL_TEXT}{kind}: a2" in line:
                return
        pytest.fail(f"no '{DOORBELL_TEXT}{kind}: a2' line in {seen}")

    with a1.rpc() as rpc:
        rpc.monitor("INFO", lines.put)
        a2 = serf_agents("a2", join=a1, tags=EDGE)
        rung("Join")
        assert by_name(rpc)["a2"].status is MemberStatus.ALIVE
        with a2.rpc() as rpc2:
            rpc2.tags(set={"weight": "50"})
            rung("Update")
            assert by_name(rpc)["a2"].tags.get("weight") == "50"
            rpc2.leave()
            assert rpc2.wait_closed(10)
        rung("Leave")
        assert by_name(rpc)["a2"].status is MemberStatus.LEFT
    assert a2.wait_exit(10) == 0


def test_stream_member_failed_after_kill_9(serf_agents: StartAgent) -> None:
    a1 = serf_agents("a1")
    a2 = serf_agents("a2", join=a1)
    events: queue.Queue[MemberEvent] = queue.Queue()
    with a1.rpc() as rpc:
        wait_until(lambda: "a2" in by_name(rpc), 5, "a2 in a1's members")
        rpc.stream(MEMBER_EVENT_TYPES, events.put)
        killed = time.monotonic()
        a2.kill()
        # Probe interval 1 s plus suspicion: about 5-6 s on loopback with -profile local.
        failed = wait_event(events, EventKind.FAILED, "a2", 25)
        took = time.monotonic() - killed
        assert failed.status is MemberStatus.FAILED
        assert by_name(rpc)["a2"].status is MemberStatus.FAILED
    logging.getLogger(__name__).info("member-failed arrived %.1f s after SIGKILL", took)


def test_tags_update_is_visible_to_another_agent(serf_agents: StartAgent) -> None:
    a1 = serf_agents("a1", tags=EDGE)
    a2 = serf_agents("a2", join=a1, tags=EDGE)
    events: queue.Queue[MemberEvent] = queue.Queue()
    with a1.rpc() as rpc1, a2.rpc() as rpc2:
        wait_until(lambda: "a2" in by_name(rpc1), 5, "a2 in a1's members")
        rpc1.stream(MEMBER_EVENT_TYPES, events.put)
        rpc2.tags(set={"weight": "50"}, delete=["port"])
        wanted = {"role": "edge", "weight": "50"}
        wait_until(lambda: dict(by_name(rpc1)["a2"].tags) == wanted, 5, "a2's new tags")
        updated = wait_event(events, EventKind.UPDATE, "a2", 10)
        assert dict(updated.tags) == wanted


def test_join_through_rpc(serf_agents: StartAgent) -> None:
    a1 = serf_agents("a1")
    a2 = serf_agents("a2")
    with a2.rpc() as rpc2, a1.rpc() as rpc1:
        assert rpc2.join([a1.bind_addr]) == 1
        wait_until(lambda: "a2" in by_name(rpc1), 5, "a2 in a1's members")
        with pytest.raises(SerfError, match="join failed"):
            rpc2.join([f"{a1.ip}:1"])
        # A failed join still carries a body; the connection must stay in step.
        assert set(by_name(rpc2)) == {"a1", "a2"}


def test_members_sees_a_joiner_before_the_stream_does(serf_agents: StartAgent) -> None:
    # Why Follower polls: the stream is coalesced, `members` is not.
    a1 = serf_agents("a1")
    events: queue.Queue[MemberEvent] = queue.Queue()
    with a1.rpc() as rpc:
        rpc.stream(MEMBER_EVENT_TYPES, events.put)
        serf_agents("a2", join=a1)
        wait_until(lambda: "a2" in by_name(rpc), 5, "a2 in a1's members")
        polled = time.monotonic()
        wait_event(events, EventKind.JOIN, "a2", 10)
        assert time.monotonic() - polled > 0.2


def test_follower_reconnects_after_agent_restart(
    serf_agents: StartAgent, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="lbsync.serf.follow")
    a1 = serf_agents("a1", tags=EDGE)
    events: queue.Queue[MemberEvent] = queue.Queue()
    polls: list[list[Member]] = []
    follower = Follower(a1.ip, a1.rpc_port, events.put, polls.append, poll_interval=0.05)
    follower.start()
    try:
        wait_until(lambda: follower.connected and polls, 5, "follower connected")
        assert [m.name for m in polls[-1]] == ["a1"]
        a1.kill()
        wait_until(lambda: not follower.connected, 5, "follower noticing the drop")
        time.sleep(1.0)  # a few failed reconnects
        a1.start()
        wait_until(lambda: follower.connected, 10, "follower reconnected")
        count = len(polls)
        wait_until(lambda: len(polls) > count, 5, "a poll after reconnecting")
        # The new connection has a stream as well.
        serf_agents("a2", join=a1)
        wait_until(lambda: any(m.name == "a2" for m in polls[-1]), 5, "a2 in a poll")
        wait_event(events, EventKind.JOIN, "a2", 10)
    finally:
        follower.stop()
    messages = [r.getMessage() for r in caplog.records]
    assert sum("lost serf agent" in m for m in messages) == 1
    assert sum("connection refused" in m for m in messages) <= 1
    assert sum("is back after" in m for m in messages) == 1


def test_event_handler_output_parses(serf_agents: StartAgent, tmp_path: Path) -> None:
    out = tmp_path / "events"
    out.mkdir()
    script = tmp_path / "handler.sh"
    script.write_text(
        "#!/bin/sh\n"
        f'f="{out}/$(date +%s%N)-$$"\n'
        'printf "%s\\n" "$SERF_EVENT" > "$f.tmp"; cat >> "$f.tmp"; mv "$f.tmp" "$f"\n'
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    a1 = serf_agents("a1", tags=EDGE, event_handler=f"member-join={script}")
    serf_agents("a2", join=a1, tags={**EDGE, "weight": "50"})
    # A node name lbsync must refuse, arriving through Serf's own formatting.
    serf_agents("evil;name", join=a1)

    def parsed() -> tuple[dict[str, Member], list[str]]:
        members: dict[str, Member] = {}
        refused: list[str] = []
        for path in sorted(out.iterdir()):
            if path.suffix == ".tmp":
                continue
            event_name, _, stdin = path.read_text().partition("\n")
            event, refusals = parse_handler_input(event_name, stdin, 1.0)
            assert event is not None and event.kind is EventKind.JOIN
            members.update((m.name, m) for m in event.members)
            refused += [r.member for r in refusals]
        return members, refused

    wait_until(lambda: "a2" in parsed()[0] and parsed()[1], 10, "handler runs")
    members, refused = parsed()
    assert set(members) == {"a1", "a2"}
    assert dict(members["a2"].tags) == {"role": "edge", "port": "8080", "weight": "50"}
    assert refused == ["evil;name"]
