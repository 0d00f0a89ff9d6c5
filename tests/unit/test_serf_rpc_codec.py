"""Serf RPC: the pure decoding helpers, then the framing against a scripted agent."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import msgpack
import pytest
from serf_fake import FakeAgent, FakeClock

from lbsync.model import EventKind, MemberEvent, MemberStatus
from lbsync.serf.rpc import (
    MEMBER_EVENT_TYPES,
    SerfError,
    SerfRPC,
    decode_addr,
    decode_member,
    decode_member_event,
    decode_status,
)
from tests.rig.procs import wait_for

# --- decoding ---


@pytest.mark.parametrize(
    ("raw", "text"),
    [
        (bytes([127, 0, 0, 41]), "127.0.0.41"),
        (bytes(10) + b"\xff\xff" + bytes([10, 0, 0, 2]), "10.0.0.2"),  # Go's 16-byte IPv4
        (bytes(15) + b"\x01", "::1"),
        (bytes.fromhex("fd000000000000000000000000000005"), "fd00::5"),
        (b"", ""),
        (None, ""),
        ("\x7f\x00\x00\x01", "127.0.0.1"),  # agent that sends bytes as msgpack raw
        (b"\xc0\xa8\x00\x01".decode("utf-8", "surrogateescape"), "192.168.0.1"),
    ],
)
def test_decode_addr(raw: bytes | str | None, text: str) -> None:
    assert decode_addr(raw) == text


@pytest.mark.parametrize("raw", [b"\x01", b"\x01\x02\x03\x04\x05", bytes(17)])
def test_decode_addr_bad_length(raw: bytes) -> None:
    with pytest.raises(ValueError, match="expected 4 or 16"):
        decode_addr(raw)


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        ("alive", MemberStatus.ALIVE),
        ("leaving", MemberStatus.LEAVING),
        ("left", MemberStatus.LEFT),
        ("failed", MemberStatus.FAILED),
        ("none", MemberStatus.NONE),
        ("reaped", MemberStatus.NONE),
        ("", MemberStatus.NONE),
        (None, MemberStatus.NONE),
        (3, MemberStatus.NONE),
    ],
)
def test_decode_status(raw: object, status: MemberStatus) -> None:
    assert decode_status(raw) is status


def test_decode_member_keeps_invalid_names() -> None:
    member = decode_member(
        {"Name": "bad name;", "Addr": bytes([1, 2, 3, 4]), "Tags": {"k": "v"},
         "Status": "left"},
        "member-leave", 5.0,
    )
    assert member.name == "bad name;"
    assert member.addr == "1.2.3.4"
    assert dict(member.tags) == {"k": "v"}
    assert member.status is MemberStatus.LEFT
    assert (member.last_event, member.time) == ("member-leave", 5.0)


def test_decode_member_with_nil_tags() -> None:
    assert dict(decode_member({"Name": "a", "Addr": b"\x01\x01\x01\x01", "Tags": None}).tags) == {}


def test_decode_member_event() -> None:
    record = {"Event": "member-failed", "Members": [{"Name": "a", "Addr": bytes(4),
                                                     "Status": "failed"}]}
    event = decode_member_event(record, 9.0)
    assert event is not None and event.kind is EventKind.FAILED
    assert [(m.name, m.addr, m.last_event, m.time) for m in event.members] == [
        ("a", "0.0.0.0", "member-failed", 9.0)
    ]


def test_decode_non_member_records() -> None:
    assert decode_member_event({"Event": "user", "Name": "deploy"}, 0.0) is None
    assert decode_member_event({}, 0.0) is None


def test_member_event_types_cover_every_kind() -> None:
    assert MEMBER_EVENT_TYPES.split(",") == [k.value for k in EventKind]


# --- framing, against a scripted agent ---


@pytest.fixture
def agent() -> Iterator[FakeAgent]:
    fake = FakeAgent()
    yield fake
    fake.close()


def test_members_over_the_wire(agent: FakeAgent) -> None:
    with SerfRPC("127.0.0.1", agent.port) as rpc:
        members = rpc.members()
    assert [(m.name, m.addr, m.status) for m in members] == [
        ("a1", "127.0.0.41", MemberStatus.ALIVE),
        ("a2", "10.0.0.2", MemberStatus.NONE),
    ]
    assert [c for c, _ in agent.requests[:2]] == ["handshake", "stop"]
    assert agent.requests[0][1] == {"Version": 1}


def test_auth(agent: FakeAgent) -> None:
    agent.auth_key = "k"
    with SerfRPC("127.0.0.1", agent.port, auth_key="k") as rpc:
        assert len(rpc.members()) == 2
    with pytest.raises(SerfError, match="refused the RPC auth key"):
        SerfRPC("127.0.0.1", agent.port, auth_key="nope").connect()
    # The bare "Authentication required" header has no body: if the client read one,
    # this would hang until the timeout instead.
    with pytest.raises(SerfError, match="requires an RPC auth key"):
        SerfRPC("127.0.0.1", agent.port, timeout=1.0).connect()


def test_stream_records_interleave_with_replies(agent: FakeAgent) -> None:
    events: list[MemberEvent] = []
    with SerfRPC("127.0.0.1", agent.port) as rpc:
        seq = rpc.stream(MEMBER_EVENT_TYPES, events.append)
        assert agent.streams == {seq: MEMBER_EVENT_TYPES}
        agent.push(seq, {"Event": "member-join", "Members": agent.members[:1]})
        agent.push(seq, {"Event": "user", "Name": "deploy", "Payload": b""})
        assert len(rpc.members()) == 2
        agent.push(seq, {"Event": "member-leave", "Members": agent.members})
        wait_for(lambda: len(events) == 2, 3.0, "len(events) == 2")
        rpc.stop(seq)
        agent.push(seq, {"Event": "member-join", "Members": agent.members})  # late record
        assert len(rpc.members()) == 2  # the late record's body was skipped, not misread
    assert [e.kind for e in events] == [EventKind.JOIN, EventKind.LEAVE]
    assert [m.name for m in events[1].members] == ["a1", "a2"]


def test_monitor_delivers_log_lines_beside_the_event_stream(agent: FakeAgent) -> None:
    lines: list[str] = []
    events: list[MemberEvent] = []
    with SerfRPC("127.0.0.1", agent.port) as rpc:
        events_seq = rpc.stream(MEMBER_EVENT_TYPES, events.append)
        log_seq = rpc.monitor("INFO", lines.append)
        assert agent.monitors == {log_seq: "INFO"} and log_seq != events_seq
        agent.log("[INFO] serf: EventMemberJoin: a1 127.0.0.41")
        agent.push(log_seq, {"Log": 7})  # not a line: dropped
        agent.push(events_seq, {"Event": "member-join", "Members": agent.members[:1]})
        agent.log("[WARN] memberlist: something else")
        assert len(rpc.members()) == 2
        wait_for(lambda: len(lines) == 2 and events, 3.0, "two lines and one event")
        rpc.stop(log_seq)
        agent.push(log_seq, {"Log": "late"})  # in flight after stop: read and dropped
        assert len(rpc.members()) == 2
    assert lines == ["[INFO] serf: EventMemberJoin: a1 127.0.0.41",
                     "[WARN] memberlist: something else"]
    assert [e.kind for e in events] == [EventKind.JOIN]


def test_a_refused_monitor_is_an_error_and_the_connection_stays(agent: FakeAgent) -> None:
    agent.refuse_monitor = True
    with SerfRPC("127.0.0.1", agent.port) as rpc:
        with pytest.raises(SerfError, match="monitor failed: Unknown log level: LOUD"):
            rpc.monitor("LOUD", print)
        assert len(rpc.members()) == 2


def test_callback_errors_do_not_kill_the_reader(agent: FakeAgent) -> None:
    def explode(event: MemberEvent) -> None:
        raise RuntimeError("boom")

    with SerfRPC("127.0.0.1", agent.port) as rpc:
        seq = rpc.stream(MEMBER_EVENT_TYPES, explode)
        agent.push(seq, {"Event": "member-join", "Members": []})
        assert len(rpc.members()) == 2


def test_calling_back_into_the_connection_from_a_callback_is_refused(agent: FakeAgent) -> None:
    errors: list[BaseException] = []
    with SerfRPC("127.0.0.1", agent.port) as rpc:

        def reenter(event: MemberEvent) -> None:
            try:
                rpc.members()
            except RuntimeError as exc:
                errors.append(exc)

        seq = rpc.stream(MEMBER_EVENT_TYPES, reenter)
        agent.push(seq, {"Event": "member-join", "Members": []})
        wait_for(lambda: errors, 3.0, "errors")
    assert "deadlock" in str(errors[0])


def test_reply_timeout(agent: FakeAgent) -> None:
    agent.silent.add("members")
    clock = FakeClock()
    with SerfRPC("127.0.0.1", agent.port, timeout=0.3, clock=clock) as rpc:
        clock.expire(1)
        with pytest.raises(SerfError, match="did not answer 'members' within 0.3 s"):
            rpc.members()
        # It waited for the reply once, for its timeout, and that ran out.
        assert clock.waits[-1] == 0.3 and clock.ended[-1] == "expired"
        assert clock.ended.count("expired") == 1


def _members_in_thread(rpc: SerfRPC) -> tuple[threading.Thread, list[object]]:
    out: list[object] = []

    def call() -> None:
        try:
            out.append(rpc.members())
        except SerfError as exc:
            out.append(exc)

    caller = threading.Thread(target=call)
    caller.start()
    return caller, out


def test_a_talking_agent_is_waited_for(agent: FakeAgent) -> None:
    """A busy agent answers late but keeps sending log lines: its reply is waited for."""
    agent.silent.add("members")
    clock = FakeClock()
    lines: list[str] = []
    with SerfRPC("127.0.0.1", agent.port, timeout=0.3, clock=clock) as rpc:
        rpc.monitor("INFO", lines.append)
        first = len(clock.waits)
        caller, out = _members_in_thread(rpc)
        # The line must come while the reply is waited for, not before.
        wait_for(lambda: len(clock.waits) > first, 3.0, "the wait for the reply")
        agent.log("memberlist: busy")
        wait_for(lambda: lines, 3.0, "the log line")
        clock.expire(1)  # the first 0.3 s runs out, but the agent spoke within it
        wait_for(lambda: len(clock.waits) >= first + 2, 3.0, "a second wait")
        agent.push(agent.seqs["members"], {"Members": agent.members})
        caller.join(3)
    assert len(out) == 1 and isinstance(out[0], list), out
    assert [m.name for m in out[0]] == ["a1", "a2"]
    # One wait ran out, the next (for what was left of 0.3 s of silence) got the reply.
    assert clock.ended[first:] == ["expired", "event"]
    assert clock.waits[first + 1] < 0.3


def test_a_talking_agent_is_waited_for_up_to_patience(agent: FakeAgent) -> None:
    """An agent that keeps talking but never answers is given up on after `patience`."""
    agent.silent.add("members")
    clock = FakeClock()
    lines: list[str] = []
    with SerfRPC("127.0.0.1", agent.port, timeout=0.3, patience=0.5, clock=clock) as rpc:
        rpc.monitor("INFO", lines.append)
        first = len(clock.waits)
        caller, out = _members_in_thread(rpc)
        for n in range(1, 10):  # each wait: a line from the agent, then the wait runs out
            wait_for(lambda n=n: len(clock.waits) >= first + n or not caller.is_alive(),
                     3.0, "a wait for the reply")  # type: ignore[misc]
            if not caller.is_alive():
                break
            agent.log(f"busy {n}")
            wait_for(lambda n=n: len(lines) == n, 3.0, "the log line")  # type: ignore[misc]
            clock.expire(1)
            wait_for(lambda n=n: clock.ended.count("expired") == n or not caller.is_alive(),
                     3.0, "the wait to run out")  # type: ignore[misc]
        caller.join(3)
    assert len(out) == 1 and isinstance(out[0], SerfError), out
    assert "did not answer 'members' within 0.5 s (busy" in str(out[0])
    assert sum(clock.waits[first:]) == pytest.approx(0.5, abs=0.01)


def test_agent_drop_fails_waiting_calls_and_marks_closed(agent: FakeAgent) -> None:
    agent.silent.add("members")
    rpc = SerfRPC("127.0.0.1", agent.port, timeout=10.0)
    rpc.connect()
    assert not rpc.closed
    errors: list[SerfError] = []

    def call() -> None:
        try:
            rpc.members()
        except SerfError as exc:
            errors.append(exc)

    caller = threading.Thread(target=call)
    caller.start()
    wait_for(lambda: any(c == "members" for c, _ in agent.requests), 3.0, "a members request")
    agent.drop()
    caller.join(3)
    assert errors and "connection lost (agent closed the connection)" in str(errors[0])
    assert rpc.wait_closed(3) and rpc.closed
    with pytest.raises(SerfError, match="connection lost"):
        rpc.members()
    rpc.close()


def test_unknown_seq_is_a_protocol_error(agent: FakeAgent) -> None:
    with SerfRPC("127.0.0.1", agent.port) as rpc:
        agent.push_raw(msgpack.packb({"Seq": 999, "Error": ""}))
        assert rpc.wait_closed(3)
        assert "unknown request 999" in (rpc.close_reason or "")


def test_close_is_prompt_and_idempotent(agent: FakeAgent) -> None:
    rpc = SerfRPC("127.0.0.1", agent.port)
    assert rpc.closed  # not connected yet
    rpc.connect()
    rpc.close()
    rpc.close()
    # Gone when close() returns: the shutdown woke the reader (else close() gives up
    # waiting for it after 2 s and the connection is not gone yet).
    assert rpc.closed and rpc.wait_closed(0)
    with pytest.raises(RuntimeError):
        rpc.connect()


def test_connection_refused() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(SerfError, match=f"127.0.0.1:{port}: connection refused"):
        SerfRPC("127.0.0.1", port).connect()


def test_silent_listener_times_out_the_handshake() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        rpc = SerfRPC("127.0.0.1", listener.getsockname()[1], timeout=0.3)
        with pytest.raises(SerfError, match="did not answer 'handshake'"):
            rpc.connect()
        assert rpc.closed
