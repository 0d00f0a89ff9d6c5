"""lbsync.apply: Plan -> runtime commands (pure), and outcomes from canned answers."""

from __future__ import annotations

import logging

import pytest

from lbsync.apply import Outcome, Step, apply_steps, steps
from lbsync.desired import server_args
from lbsync.model import AddrUpdate, Plan, Server, ServerState, WeightUpdate
from lbsync.settings import Settings

S = Settings(backend="web", check_inter=0.5, check_fall=3, check_rise=2)


def add_cmd(s: Server) -> str:
    # server_args() is tested in test_desired; here only its place in the command matters.
    return f"add server web/{s.name} {s.addr}:{s.port} {server_args(s, S)}"


def after_add(name: str) -> tuple[str, ...]:
    """A new server leaves maintenance forced DOWN, so only a passing check brings it UP."""
    return (f"enable health web/{name}", f"set server web/{name} state drain",
            f"set server web/{name} health down", f"set server web/{name} state ready")


def cmds(plan: Plan, *, dynamic: bool = False) -> list[tuple[str, str, tuple[str, ...]]]:
    return [(s.action, s.server, s.commands) for s in steps(plan, S, dynamic_cookies=dynamic)]


# --- steps -------------------------------------------------------------------------------


def test_empty_plan_has_no_steps() -> None:
    assert steps(Plan(), S, dynamic_cookies=True) == []


def test_kept_and_waiting_have_no_steps() -> None:
    assert steps(Plan(kept=("a",), waiting=("b",)), S, dynamic_cookies=False) == []


def test_add_explicit_cookie_mode() -> None:
    new = Server("e1", "10.0.0.1", 9000, 7, "e1")
    assert steps(Plan(add=(new,)), S, dynamic_cookies=False) == [Step(
        "add", "e1", "addr=10.0.0.1:9000 weight=7", (add_cmd(new), *after_add("e1")))]
    assert add_cmd(new).startswith("add server web/e1 10.0.0.1:9000 check inter 500 ")
    assert add_cmd(new).endswith(" fall 3 rise 2 pool-max-conn -1 pool-purge-delay 5s"
                                 " weight 7 cookie e1")


def test_add_dynamic_cookie_mode_recomputes_cookies() -> None:
    new = Server("e1", "::1", 80, 100, None)
    assert cmds(Plan(add=(new,)), dynamic=True) == [(
        "add", "e1",
        (add_cmd(new), "enable dynamic-cookie backend web", *after_add("e1")),
    )]
    assert " cookie " not in add_cmd(new)


def test_add_ends_ready_and_never_enables_before_health_is_down() -> None:
    commands = steps(Plan(add=(Server("a", "10.0.0.1", 80),)), S,
                     dynamic_cookies=False)[0].commands
    assert commands[-1] == "set server web/a state ready"
    assert commands.index("set server web/a health down") < len(commands) - 1
    assert "enable server web/a" not in commands


def test_dynamic_cookie_command_only_in_dynamic_mode() -> None:
    plan = Plan(add=(Server("a", "10.0.0.1", 80),), undrain=("c",),
                maint=("d",), suspect=("s",), remove=("e",), kill=("f",),
                weights=(WeightUpdate("g", 1),),
                addrs=(AddrUpdate("h", "10.0.0.2", 81),))
    dynamic = [c for s in steps(plan, S, dynamic_cookies=True) for c in s.commands]
    explicit = [c for s in steps(plan, S, dynamic_cookies=False) for c in s.commands]
    assert dynamic.count("enable dynamic-cookie backend web") == 1
    assert not any("dynamic-cookie" in c for c in explicit)
    assert [c for c in dynamic if "dynamic-cookie" not in c] == explicit


def test_add_with_agent_port_enables_the_agent() -> None:
    (step,) = steps(Plan(add=(Server("a", "10.0.0.1", 80, agent_port=8081),)), S,
                    dynamic_cookies=False)
    assert "agent-check agent-port 8081" in step.commands[0]
    assert "enable agent web/a" in step.commands


def test_undrain() -> None:
    assert cmds(Plan(undrain=("a",))) == [("undrain", "a", ("set server web/a state ready",))]


def test_leave_is_maintenance_not_drain() -> None:
    # Drain would still take the clients with the server's cookie; no `shutdown sessions`.
    assert cmds(Plan(maint=("a",))) == [("maint", "a", ("set server web/a state maint",))]


def test_suspect_is_drained() -> None:
    # Not maint: maintenance pauses the health check the kill waits for.
    assert cmds(Plan(suspect=("a",))) == [("drain", "a", ("set server web/a state drain",))]


REMOVAL = ("set server web/a state maint", "shutdown sessions server web/a", "del server web/a")


def test_remove() -> None:
    assert cmds(Plan(remove=("a",))) == [("del", "a", REMOVAL)]


def test_kill() -> None:
    assert cmds(Plan(kill=("a",))) == [("kill", "a", REMOVAL)]


@pytest.mark.parametrize(("port", "other"), [(8080, 8081), (65535, 65534)])
def test_removal_purges_idle_connections_by_moving_the_port_and_back(port: int,
                                                                      other: int) -> None:
    # HAProxy 2.6 refuses `del server` while a connection sits in the idle pool, and one
    # that ended in maintenance does; an address change purges the pool.
    cur = ServerState("web", "a", "10.0.0.1", port, 0, 1, 100, 100)
    (step,) = steps(Plan(remove=("a",)), S, dynamic_cookies=True, current={"a": cur})
    assert step.commands == (
        "set server web/a state maint", f"set server web/a addr 10.0.0.1 port {other}",
        f"set server web/a addr 10.0.0.1 port {port}", "shutdown sessions server web/a",
        "del server web/a")


def test_weight() -> None:
    assert cmds(Plan(weights=(WeightUpdate("a", 0),))) == [
        ("weight", "a", ("set weight web/a 0",))]


def test_addr() -> None:
    assert cmds(Plan(addrs=(AddrUpdate("a", "2001:db8::2", 9090),))) == [
        ("addr", "a", ("set server web/a addr 2001:db8::2 port 9090",))]


def test_order_kill_first_then_add_then_the_rest() -> None:
    plan = Plan(
        remove=("r",), maint=("d",), addrs=(AddrUpdate("ad", "10.0.0.3", 1),),
        weights=(WeightUpdate("w", 5),), undrain=("u",),
        add=(Server("n1", "10.0.0.1", 80), Server("n2", "10.0.0.2", 80)), kill=("k1", "k2"),
    )
    assert [(s.action, s.server) for s in steps(plan, S, dynamic_cookies=False)] == [
        ("kill", "k1"), ("kill", "k2"), ("add", "n1"), ("add", "n2"),
        ("undrain", "u"), ("weight", "w"), ("addr", "ad"), ("maint", "d"), ("del", "r"),
    ]


def test_every_command_names_the_configured_backend() -> None:
    plan = Plan(add=(Server("a", "10.0.0.1", 80),), undrain=("c",),
                maint=("d",), suspect=("s",), remove=("e",), kill=("f",),
                weights=(WeightUpdate("g", 1),),
                addrs=(AddrUpdate("h", "10.0.0.2", 81),))
    for s in steps(plan, S, dynamic_cookies=True):
        for c in s.commands:
            assert "web/" in c or c == "enable dynamic-cookie backend web"
            assert "nodes" not in c


# --- apply_steps -------------------------------------------------------------------------


class FakeRuntime:
    """Answers each command from a table; records every batch it was sent."""

    def __init__(self, answers: dict[str, str]) -> None:
        self.answers = answers
        self.batches: list[list[str]] = []

    def execute(self, commands: list[str]) -> list[str]:
        self.batches.append(list(commands))
        return [self.answers.get(c, "") for c in commands]

    def servers_state(self, backend: str) -> list[ServerState]:
        raise AssertionError("apply_steps must not read state")


def fake_response_error(command: str, answer: str) -> str | None:
    if command.startswith("add server "):
        return None if answer == "New server registered." else answer or "empty answer"
    if command.startswith("del server "):
        return None if answer == "Server deleted." else answer or "empty answer"
    return answer or None


def test_apply_nothing_sends_nothing() -> None:
    rt = FakeRuntime({})
    assert apply_steps(rt, [], fake_response_error) == []
    assert rt.batches == []


def test_apply_sends_one_batch_in_order_and_all_succeed() -> None:
    plan = Plan(kill=("k",), add=(Server("n", "10.0.0.1", 80),), maint=("d",))
    todo = steps(plan, S, dynamic_cookies=True)
    rt = FakeRuntime({add_cmd(Server("n", "10.0.0.1", 80)):
                      "New server registered.", "del server web/k": "Server deleted."})
    outcomes = apply_steps(rt, todo, fake_response_error)
    assert rt.batches == [[c for st in todo for c in st.commands]]
    assert outcomes == [Outcome(st, None) for st in todo]


def test_apply_attributes_errors_to_the_right_step() -> None:
    plan = Plan(kill=("k",), add=(Server("n", "10.0.0.1", 80),), maint=("d",),
                remove=("r",))
    todo = steps(plan, S, dynamic_cookies=False)
    rt = FakeRuntime({
        "del server web/k": "Server deleted.",
        add_cmd(Server("n", "10.0.0.1", 80)): "New server registered.",
        "set server web/d state maint": "No such server.",
        "shutdown sessions server web/r": "Require 'server' in maintenance.",
        "del server web/r": "Server still has connections attached to it, cannot remove it.",
    })
    outcomes = apply_steps(rt, todo, fake_response_error)
    by_action = {o.step.action: o.error for o in outcomes}
    assert by_action == {
        "kill": None,
        "add": None,
        "maint": "'set server web/d state maint': No such server.",
        # The first failing command of a step is the one reported.
        "del": "'shutdown sessions server web/r': Require 'server' in maintenance.",
    }
    assert [o.step for o in outcomes] == todo


def test_apply_failed_add_does_not_taint_the_next_step() -> None:
    plan = Plan(add=(Server("a", "10.0.0.1", 80), Server("b", "10.0.0.2", 80)))
    todo = steps(plan, S, dynamic_cookies=True)
    rt = FakeRuntime({
        add_cmd(Server("a", "10.0.0.1", 80)): "Already exists a server.",
        add_cmd(Server("b", "10.0.0.2", 80)): "New server registered.",
        "set server web/a state ready": "No such server.",
    })
    outcomes = apply_steps(rt, todo, fake_response_error)
    assert outcomes[0].error is not None
    assert outcomes[0].error.startswith("'add server web/a ")
    assert outcomes[0].error.endswith(": Already exists a server.")
    assert outcomes[1].error is None


def test_apply_logs_one_line_per_step(caplog: pytest.LogCaptureFixture) -> None:
    todo = steps(Plan(maint=("d",), remove=("r",)), S, dynamic_cookies=False)
    rt = FakeRuntime({"del server web/r": "Server deleted.",
                      "set server web/d state maint": "No such server."})
    with caplog.at_level(logging.INFO, logger="lbsync.apply"):
        apply_steps(rt, todo, fake_response_error)
    records = [r for r in caplog.records if r.name == "lbsync.apply"]
    assert [r.levelno for r in records] == [logging.ERROR, logging.INFO]
    assert "maint server=d member leaving" in records[0].getMessage()
    assert "No such server." in records[0].getMessage()
    assert records[1].getMessage().startswith("del server=r leave done took=")
