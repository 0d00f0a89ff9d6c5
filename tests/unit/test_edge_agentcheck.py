"""The agent-check reply (pure) and the server that sends it, on a loopback port."""

from __future__ import annotations

import socket
import time

import pytest

from lbsync.edge.agentcheck import (
    READY_FOR,
    AgentCheck,
    AgentCheckError,
    CpuIdle,
    agent_reply,
)


@pytest.mark.parametrize(("idle", "reply"), [
    (100.0, "up 100%\n"), (75.4, "up 75%\n"), (75.6, "up 76%\n"), (10.0, "up 10%\n"),
    (3.0, "up 10%\n"), (0.0, "up 10%\n"), (120.0, "up 100%\n"),
])
def test_weight_is_cpu_idle_clamped(idle: float, reply: str) -> None:
    assert agent_reply(idle, stopping=False) == reply


@pytest.mark.parametrize("idle", [0.0, 50.0, 100.0])
def test_stopping_says_maint_whatever_the_load(idle: float) -> None:
    # Not `drain`: HAProxy's drain still takes the clients that carry the node's cookie.
    assert agent_reply(idle, stopping=True) == "maint\n"
    assert agent_reply(idle, stopping=True, undo=True) == "maint\n"


def test_says_ready_only_while_undoing() -> None:
    # `ready` clears the drain and maintenance lbsync (or an operator) set too.
    for idle in range(0, 101, 5):
        assert "ready" not in agent_reply(idle, stopping=False).split()
        assert "ready" not in agent_reply(idle, stopping=True).split()
    assert agent_reply(42.0, stopping=False, undo=True) == "ready up 42%\n"


class FixedIdle:
    def __init__(self, percent: float) -> None:
        self.percent = percent
        self.started = self.stopped = False

    def start(self) -> None:
        self.started = True

    def stop(self) -> None:
        self.stopped = True


def read_line(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
        data = b""
        while chunk := s.recv(64):
            data += chunk
        return data


def test_server_answers_one_line_then_closes() -> None:
    idle = FixedIdle(42.0)
    agent = AgentCheck("127.0.0.1", 0, idle)
    agent.start()
    try:
        assert idle.started
        assert read_line(agent.port) == b"up 42%\n"
        idle.percent = 90.0
        assert read_line(agent.port) == b"up 90%\n"
        agent.maint()
        assert agent.stopping
        assert read_line(agent.port) == b"maint\n"
    finally:
        agent.close()
    assert idle.stopped
    with pytest.raises(OSError):
        read_line(agent.port)


def test_resume_says_ready_for_a_while_then_up_again() -> None:
    now = [100.0]
    agent = AgentCheck("127.0.0.1", 0, FixedIdle(50.0), clock=lambda: now[0])
    agent.maint()
    assert agent.reply() == "maint\n"
    agent.resume()
    assert not agent.stopping
    assert agent.reply() == "ready up 50%\n"
    now[0] += READY_FOR - 0.1
    assert agent.reply() == "ready up 50%\n"
    now[0] += 0.1
    assert agent.reply() == "up 50%\n"
    agent.resume()
    agent.maint()  # a stop within the window: maint wins
    assert agent.reply() == "maint\n"


def test_port_in_use_is_one_clear_error() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        agent = AgentCheck("127.0.0.1", busy.getsockname()[1], FixedIdle(50))
        with pytest.raises(AgentCheckError, match="agent-check cannot listen on 127.0.0.1:"):
            agent.start()


def test_cpu_idle_comes_from_cpu_time_deltas() -> None:
    samples = iter([(100.0, 200.0), (130.0, 300.0), (130.0, 300.0), (230.0, 400.0)])
    idle = CpuIdle(sample=lambda: next(samples))
    seen = []
    for _ in range(4):
        idle.update()
        seen.append(idle.percent)
    # No baseline yet, then 30 idle of 100 elapsed, then no time passed (kept), then 100 %.
    assert seen == [100.0, 30.0, 30.0, 100.0]


def test_cpu_idle_samples_the_real_machine() -> None:
    idle = CpuIdle(interval=0.05)
    idle.start()
    time.sleep(0.2)
    idle.stop()
    assert 0.0 <= idle.percent <= 100.0


def test_cpu_idle_stays_within_0_and_100_despite_float_error() -> None:
    samples = iter([(0.0, 0.0), (10.000000001, 10.0), (10.000000001, 20.0)])
    idle = CpuIdle(sample=lambda: next(samples))
    idle.update()
    idle.update()
    assert idle.percent == 100.0
    idle.update()
    assert idle.percent == 0.0
