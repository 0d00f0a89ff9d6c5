"""Follower against a scripted agent: polling, events, outages, logging, stop."""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterator

import pytest
from serf_fake import FakeAgent, FakeClock

from lbsync.model import Member, MemberEvent
from lbsync.serf.follow import Follower
from tests.rig.procs import free_port, wait_for


class Recorder:
    def __init__(self) -> None:
        self.events: list[MemberEvent] = []
        self.polls: list[list[Member]] = []
        self.threads: set[str] = set()

    def on_event(self, event: MemberEvent) -> None:
        self.threads.add(threading.current_thread().name)
        self.events.append(event)

    def on_members(self, members: list[Member]) -> None:
        self.threads.add(threading.current_thread().name)
        self.polls.append(members)


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def agent() -> Iterator[FakeAgent]:
    fake = FakeAgent()
    yield fake
    fake.close()


def test_polls_and_events_arrive_on_the_follower_thread(
    agent: FakeAgent, recorder: Recorder
) -> None:
    follower = Follower("127.0.0.1", agent.port, recorder.on_event, recorder.on_members,
                        poll_interval=0.05)
    follower.start()
    try:
        wait_for(lambda: follower.connected and agent.streams and len(recorder.polls) >= 3, 5.0,
                 "connected, streaming, 3 polls")
        (seq,) = agent.streams
        agent.push(seq, {"Event": "member-join", "Members": agent.members[:1]})
        wait_for(lambda: recorder.events, 5.0, "recorder.events")
    finally:
        follower.stop()
    assert [m.name for m in recorder.polls[0]] == ["a1", "a2"]
    assert recorder.events[0].members[0].name == "a1"
    assert recorder.threads == {f"serf-follow-127.0.0.1:{agent.port}"}
    assert not follower.connected


def test_outage_logs_once_and_recovery_once(
    recorder: Recorder, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="lbsync.serf.follow")
    port = free_port()
    clock = FakeClock()
    clock.expire(4)  # four backoffs run out at once; the fifth waits for the agent below
    follower = Follower("127.0.0.1", port, recorder.on_event, recorder.on_members,
                        clock=clock)
    follower.start()
    agent: FakeAgent | None = None
    try:
        wait_for(lambda: len(clock.waits) == 5, 5.0, "five reconnect attempts")
        assert clock.waits == [0.1, 0.2, 0.4, 0.8, 1.6]  # doubling from BACKOFF_FIRST
        assert not follower.connected
        agent = FakeAgent(port=port)
        clock.expire(1)  # the fifth backoff: the agent is up now
        wait_for(lambda: follower.connected and recorder.polls, 5.0, "connected and a poll")
        agent.drop()  # as when the agent restarts: the follower must notice and come back
        fake = agent
        wait_for(lambda: fake.accepted == 2 and follower.connected, 5.0, "the second connection")
        count = len(recorder.polls)
        wait_for(lambda: len(recorder.polls) > count + 2, 5.0, "len(recorder.polls) > count + 2")
    finally:
        follower.stop()
        if agent is not None:
            agent.close()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    infos = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert len([w for w in warnings if "connection refused" in w]) == 1
    # The outage as the follower measured it: the five backoffs, 3.1 s on the fake clock.
    back = [i for i in infos if "is back after" in i]
    assert back and re.search(r"is back after 3\.[12] s", back[0]), back
    assert sum("lost serf agent" in w for w in warnings) == 1


def test_stop_cuts_the_reconnect_backoff_short(recorder: Recorder) -> None:
    clock = FakeClock()  # no wait runs out: the first backoff lasts until stop() ends it
    follower = Follower("127.0.0.1", free_port(), recorder.on_event, recorder.on_members,
                        clock=clock)
    follower.start()
    wait_for(lambda: clock.waits, 5.0, "the first backoff")
    follower.stop()
    assert clock.waits == [0.1] and clock.ended == ["event"]


def test_stop_is_prompt_with_a_hung_agent(agent: FakeAgent, recorder: Recorder) -> None:
    agent.silent.add("members")
    clock = FakeClock()  # no reply wait runs out: the members call waits until stop()
    follower = Follower("127.0.0.1", agent.port, recorder.on_event, recorder.on_members,
                        timeout=30.0, clock=clock)
    follower.start()
    wait_for(lambda: any(c == "members" for c, _ in agent.requests), 5.0, "a members request")
    follower.stop()
    # Every reply wait (30 s each) is over, ended by its event: stop() closed the connection.
    assert clock.waits and set(clock.waits) == {30.0}
    assert clock.ended == ["event"] * len(clock.waits)


def test_callback_errors_are_logged_not_fatal(
    agent: FakeAgent, caplog: pytest.LogCaptureFixture
) -> None:
    polls: list[int] = []

    def bad_members(members: list[Member]) -> None:
        polls.append(len(members))
        raise ValueError("consumer bug")

    follower = Follower("127.0.0.1", agent.port, lambda e: None, bad_members, poll_interval=0.02)
    follower.start()
    try:
        wait_for(lambda: len(polls) >= 3, 5.0, "len(polls) >= 3")
    finally:
        follower.stop()
    assert "consumer bug" in caplog.text


def test_events_received_before_a_drop_come_before_the_next_poll(
    agent: FakeAgent,
) -> None:
    order: list[str] = []
    follower = Follower(
        "127.0.0.1", agent.port,
        lambda e: order.append(e.kind.value),
        lambda ms: order.append("poll"),
        poll_interval=10.0,  # only the poll straight after each connect
    )
    follower.start()
    try:
        wait_for(lambda: order == ["poll"] and agent.streams, 5.0, "a poll, then the stream")
        (seq,) = agent.streams
        agent.streams.clear()
        agent.push(seq, {"Event": "member-leave", "Members": []})
        agent.drop()
        wait_for(lambda: len(order) >= 3, 5.0, "len(order) >= 3")
    finally:
        follower.stop()
    assert order[:3] == ["poll", "member-leave", "poll"]


def test_poll_interval_must_be_positive(recorder: Recorder) -> None:
    with pytest.raises(ValueError, match="poll interval"):
        Follower("127.0.0.1", 1, recorder.on_event, recorder.on_members, poll_interval=0)


def test_a_list_lacking_known_members_is_delivered_after_joining_them(
    agent: FakeAgent, recorder: Recorder, caplog: pytest.LogCaptureFixture
) -> None:
    # The agent restarted without its snapshot: it lists only a1; the registry knows a2
    # alive at 10.0.0.2. The follower joins it before anything is delivered.
    lost = agent.members.pop()
    agent.joinable["10.0.0.2:7946"] = {**lost, "Status": "alive"}
    known = {"a1": Member("a1", "127.0.0.41"), "a2": Member("a2", "10.0.0.2")}
    asked: list[list[str]] = []

    def rejoin(members: list[Member]) -> list[Member]:
        names = {m.name for m in members}
        asked.append(sorted(names))
        return [m for n, m in known.items() if n not in names]

    follower = Follower("127.0.0.1", agent.port, recorder.on_event, recorder.on_members,
                        poll_interval=0.05, rejoin=rejoin)
    with caplog.at_level(logging.INFO, logger="lbsync.serf.follow"):
        follower.start()
        try:
            wait_for(lambda: len(recorder.polls) >= 3, 5.0, "len(recorder.polls) >= 3")
        finally:
            follower.stop()
    assert all({m.name for m in poll} == {"a1", "a2"} for poll in recorder.polls)
    assert [body["Existing"] for cmd, body in agent.requests if cmd == "join"] == [
        ["10.0.0.2:7946"]]
    lines = [r.getMessage() for r in caplog.records if "did not know" in r.getMessage()]
    assert lines == [f"serf agent at 127.0.0.1:{agent.port} did not know a2 (alive in the "
                     "registry): joined 1 of 1 (10.0.0.2:7946)"]


def test_a_failed_join_delivers_the_list_as_it_is(
    agent: FakeAgent, recorder: Recorder, caplog: pytest.LogCaptureFixture
) -> None:
    agent.members.pop()  # a2 is gone and cannot be joined
    calls: list[int] = []

    def rejoin(members: list[Member]) -> list[Member]:
        calls.append(1)
        return [Member("a2", "10.0.0.2")] if len(calls) == 1 else []

    follower = Follower("127.0.0.1", agent.port, recorder.on_event, recorder.on_members,
                        poll_interval=0.05, rejoin=rejoin)
    with caplog.at_level(logging.WARNING, logger="lbsync.serf.follow"):
        follower.start()
        try:
            wait_for(lambda: len(recorder.polls) >= 2, 5.0, "len(recorder.polls) >= 2")
        finally:
            follower.stop()
    assert [m.name for m in recorder.polls[0]] == ["a1"]
    assert any("join 10.0.0.2:7946 failed" in r.getMessage() for r in caplog.records)
    assert follower.connected is False and agent.accepted == 1  # no reconnect over it


def _polls(agent: FakeAgent) -> int:
    return sum(1 for command, _ in agent.requests if command == "members")


def test_a_member_change_in_the_agents_log_polls_at_once(
    agent: FakeAgent, recorder: Recorder
) -> None:
    # A tick far away: any poll after the first comes from the doorbell.
    follower = Follower("127.0.0.1", agent.port, recorder.on_event, recorder.on_members,
                        poll_interval=60.0)
    follower.start()
    try:
        wait_for(lambda: agent.monitors and recorder.polls, 5.0, "log stream and first poll")
        assert list(agent.monitors.values()) == ["INFO"]
        agent.log("2026/12/04 21:52:39 [INFO] agent.ipc: Accepted client: 127.0.0.1:55132")
        agent.log("2026/12/04 21:52:39 [INFO] serf: EventMemberJoin: a3 127.0.0.43")
        wait_for(lambda: len(recorder.polls) == 2, 5.0, "a second poll")
        # A burst (a join storm) asks for a poll per line; it gets one per DOORBELL_GAP.
        for i in range(20):
            agent.log(f"2026/12/04 21:52:40 [INFO] serf: EventMemberFailed: a{i} 10.0.0.{i}")
        wait_for(lambda: len(recorder.polls) >= 3, 5.0, "a poll after the burst")
        burst_polls = _polls(agent) - 2
    finally:
        follower.stop()
    assert 1 <= burst_polls <= 5, burst_polls


def test_other_log_lines_do_not_poll(agent: FakeAgent, recorder: Recorder) -> None:
    follower = Follower("127.0.0.1", agent.port, recorder.on_event, recorder.on_members,
                        poll_interval=60.0)
    follower.start()
    try:
        wait_for(lambda: agent.monitors and recorder.polls, 5.0, "log stream and first poll")
        for line in ("[WARN] memberlist: Refuting a suspect message (from: lb)",
                     "[INFO] agent: Received event: member-join",
                     "[INFO] serf: EventMember"[:-1]):
            agent.log(line)
        # Then a probe that does poll: once it has, the lines before it were handled.
        agent.log("[INFO] serf: EventMemberLeave: a2 10.0.0.2")
        wait_for(lambda: len(recorder.polls) >= 2, 5.0, "the leave's poll")
    finally:
        follower.stop()
    assert _polls(agent) == 2


def test_an_agent_without_a_log_stream_is_followed_by_the_poll(
    agent: FakeAgent, recorder: Recorder, caplog: pytest.LogCaptureFixture
) -> None:
    agent.refuse_monitor = True
    follower = Follower("127.0.0.1", agent.port, recorder.on_event, recorder.on_members,
                        poll_interval=0.05)
    with caplog.at_level(logging.WARNING, logger="lbsync.serf.follow"):
        follower.start()
        try:
            wait_for(lambda: len(recorder.polls) >= 3, 5.0, "three polls")
        finally:
            follower.stop()
    assert agent.accepted == 1  # no reconnect loop over it
    warnings = [r.getMessage() for r in caplog.records]
    assert warnings == [f"serf agent at 127.0.0.1:{agent.port} gives no log stream (serf agent "
                        f"at 127.0.0.1:{agent.port}: monitor failed: Unknown log level: INFO); "
                        "member changes are noticed at the next poll only"]
