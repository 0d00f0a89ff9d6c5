"""lbsync.plan: diff(HAProxy's actual backend, desired state) -> Plan, with injected time."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pytest

from lbsync.model import (
    ADMIN_CMAINT,
    ADMIN_FDRAIN,
    ADMIN_FMAINT,
    ADMIN_IMAINT,
    OP_RUNNING,
    OP_STOPPED,
    AddrUpdate,
    DesiredState,
    Plan,
    Server,
    ServerState,
    WeightUpdate,
)
from lbsync.plan import Holds, Timeouts, make_plan, servers_after

BE = "nodes"


def st(name: str, addr: str = "10.0.0.1", port: int = 8080, *, admin: int = 0,
       op: int = OP_RUNNING, weight: int = 100, sessions: int = 0) -> ServerState:
    return ServerState(BE, name, addr, port, op, admin, weight, weight, sessions)


def srv(name: str, addr: str = "10.0.0.1", port: int = 8080, weight: int = 100,
        cookie: str | None = None) -> Server:
    return Server(name, addr, port, weight, cookie)


def want(*servers: Server, leaving: Sequence[str] = (), failed: Sequence[str] = (),
         explicit: bool = False) -> DesiredState:
    return DesiredState({s.name: s for s in servers}, frozenset(leaving), frozenset(failed),
                        (), explicit)


def plan(actual: Sequence[ServerState], desired: DesiredState, *, now: float = 100.0,
         drain_started: Mapping[str, float] | None = None, drain_timeout: float = 30.0,
         applied_weights: Mapping[str, int] | None = None,
         held_by_us: frozenset[str] = frozenset(), removing: frozenset[str] = frozenset(),
         failed_grace: float = 0.0, failed_timeout: float = 60.0) -> Plan:
    return make_plan(actual, desired,
                     Holds(drain_started or {}, applied_weights or {}, held_by_us, removing),
                     Timeouts(drain_timeout, failed_grace, failed_timeout), now=now)


KEEPER = st("keeper", "10.0.0.9")
KEEPER_SRV = srv("keeper", "10.0.0.9")


# --- nothing to do -----------------------------------------------------------------------


def test_in_sync_is_empty() -> None:
    p = plan([st("a"), st("b", "10.0.0.2")], want(srv("a"), srv("b", "10.0.0.2")))
    assert p == Plan()
    assert p.empty


def test_empty_backend_and_no_members_is_empty() -> None:
    assert plan([], want()) == Plan()


# --- join --------------------------------------------------------------------------------


def test_join_adds() -> None:
    new = srv("b", "10.0.0.2", 9000, 5, "b")
    p = plan([st("a")], want(srv("a"), new))
    assert p == Plan(add=(new,))
    assert not p.empty


def test_adds_are_sorted_by_name() -> None:
    p = plan([], want(srv("c"), srv("a"), srv("b")))
    assert [s.name for s in p.add] == ["a", "b", "c"]


# --- graceful leave ----------------------------------------------------------------------


def test_leave_puts_the_server_in_maintenance() -> None:
    # Not drain: HAProxy's drain still sends it the clients that carry its cookie.
    p = plan([KEEPER, st("a")], want(KEEPER_SRV, leaving=["a"]))
    assert p == Plan(maint=("a",))


def test_unknown_server_in_haproxy_is_put_in_maintenance() -> None:
    # Neither desired nor leaving nor failed: e.g. added by hand, or a reaped member.
    p = plan([KEEPER, st("stranger")], want(KEEPER_SRV))
    assert p == Plan(maint=("stranger",))


def test_a_drained_leaving_server_goes_to_maintenance_too() -> None:
    # Drained by a node's older agent-check, an operator, or as a suspect before its
    # leave intent arrived: its cookie holders still land there until it is in maint.
    p = plan([KEEPER, st("a", admin=ADMIN_FDRAIN, sessions=3)], want(KEEPER_SRV, leaving=["a"]),
             now=110.0, drain_started={"a": 100.0})
    assert p == Plan(maint=("a",))


def test_maintenance_with_sessions_waits() -> None:
    p = plan([KEEPER, st("a", admin=ADMIN_FMAINT, op=OP_STOPPED, sessions=3)],
             want(KEEPER_SRV, leaving=["a"]), now=110.0, drain_started={"a": 100.0},
             held_by_us=frozenset({"a"}))
    assert p == Plan(waiting=("a",))
    assert p.empty  # waiting is not work


@pytest.mark.parametrize("held", [frozenset({"a"}), frozenset()])
def test_maintenance_without_sessions_is_removed(held: frozenset[str]) -> None:
    p = plan([KEEPER, st("a", admin=ADMIN_FMAINT, sessions=0)], want(KEEPER_SRV, leaving=["a"]),
             now=101.0, drain_started={"a": 100.0}, held_by_us=held)
    assert p == Plan(remove=("a",))


@pytest.mark.parametrize(("now", "removed"), [(129.9, False), (130.0, True), (500.0, True)])
def test_drain_timeout_removes_despite_sessions(now: float, removed: bool) -> None:
    p = plan([KEEPER, st("a", admin=ADMIN_FMAINT, sessions=7)], want(KEEPER_SRV, leaving=["a"]),
             now=now, drain_started={"a": 100.0}, drain_timeout=30.0)
    assert p == (Plan(remove=("a",)) if removed else Plan(waiting=("a",)))


def test_leave_with_unknown_start_waits_from_now() -> None:
    p = plan([KEEPER, st("a", admin=ADMIN_FMAINT, sessions=1)], want(KEEPER_SRV, leaving=["a"]),
             now=1e9, drain_started={}, drain_timeout=30.0)
    assert p.waiting == ("a",)


def test_maintenance_set_by_the_leaving_node_itself_waits_like_lbsyncs() -> None:
    # A stopping node's agent-check answers `maint` before its `serf leave`: the same
    # FMAINT bit, not lbsync's, and its sessions are not cut for it.
    p = plan([KEEPER, st("a", admin=ADMIN_FMAINT, op=OP_STOPPED, sessions=4)],
             want(KEEPER_SRV, leaving=["a"]))
    assert p == Plan(waiting=("a",))


def test_a_removal_lbsync_had_started_is_finished() -> None:
    # `maint` + `shutdown sessions` went out, `del server` was refused (connections not yet
    # freed) or lbsync stopped before it.
    p = plan([KEEPER, st("a", admin=ADMIN_FMAINT, sessions=4)], want(KEEPER_SRV, leaving=["a"]),
             removing=frozenset({"a"}), held_by_us=frozenset({"a"}))
    assert p == Plan(remove=("a",))


# --- failure -----------------------------------------------------------------------------


def test_failed_is_drained_first_even_without_a_grace() -> None:
    # Serf's word alone does not cut sessions.
    p = plan([KEEPER, st("a", sessions=50)], want(KEEPER_SRV, failed=["a"]))
    assert p == Plan(suspect=("a",))
    assert not p.empty


def test_failed_with_its_check_down_is_killed_at_once_without_a_grace() -> None:
    p = plan([KEEPER, st("a", admin=ADMIN_FDRAIN, op=OP_STOPPED, sessions=5)],
             want(KEEPER_SRV, failed=["a"]), drain_started={"a": 100.0})
    assert p == Plan(kill=("a",))


def test_failed_within_its_grace_waits_for_its_sessions() -> None:
    p = plan([KEEPER, st("a", admin=ADMIN_FDRAIN, op=OP_STOPPED, sessions=5)],
             want(KEEPER_SRV, failed=["a"]), now=100.0, drain_started={"a": 99.0},
             failed_grace=2.0)
    assert p == Plan(waiting=("a",))


def test_failed_past_its_grace_with_its_check_down_is_killed() -> None:
    # A crash or a real partition: HAProxy's check agrees within fall x inter.
    p = plan([KEEPER, st("a", admin=ADMIN_FDRAIN, op=OP_STOPPED, sessions=5)],
             want(KEEPER_SRV, failed=["a"]), now=101.0, drain_started={"a": 99.0},
             failed_grace=2.0)
    assert p == Plan(kill=("a",))


@pytest.mark.parametrize(("now", "killed"), [(101.0, False), (158.9, False), (159.0, True)])
def test_failed_with_its_check_passing_keeps_its_sessions_until_the_failed_timeout(
        now: float, killed: bool) -> None:
    # Gossip lost while HTTP flows: the member still serves its sessions.
    p = plan([KEEPER, st("a", admin=ADMIN_FDRAIN, op=OP_RUNNING, sessions=5)],
             want(KEEPER_SRV, failed=["a"]), now=now, drain_started={"a": 99.0},
             failed_grace=2.0, failed_timeout=60.0)
    assert p == (Plan(kill=("a",)) if killed else Plan(waiting=("a",)))


def test_failed_without_sessions_is_removed_within_its_grace() -> None:
    p = plan([KEEPER, st("a", admin=ADMIN_FDRAIN)], want(KEEPER_SRV, failed=["a"]),
             now=99.5, drain_started={"a": 99.0}, failed_grace=2.0)
    assert p == Plan(remove=("a",))


def test_failed_in_maintenance_is_not_killed_for_its_paused_check() -> None:
    # Maintenance pauses the health check (op_state reads stopped): that is no evidence,
    # so its sessions wait for the failed timeout.
    down_in_maint = st("a", admin=ADMIN_FMAINT, op=OP_STOPPED, sessions=2)
    p = plan([KEEPER, down_in_maint], want(KEEPER_SRV, failed=["a"]), now=110.0,
             drain_started={"a": 100.0}, failed_grace=2.0, failed_timeout=60.0)
    assert p == Plan(waiting=("a",))
    p = plan([KEEPER, down_in_maint], want(KEEPER_SRV, failed=["a"]), now=160.0,
             drain_started={"a": 100.0}, failed_grace=2.0, failed_timeout=60.0)
    assert p == Plan(kill=("a",))


def test_failed_in_maintenance_without_sessions_is_removed() -> None:
    p = plan([KEEPER, st("a", admin=ADMIN_FMAINT, op=OP_STOPPED)],
             want(KEEPER_SRV, failed=["a"]), failed_grace=2.0)
    assert p == Plan(remove=("a",))


def test_failed_then_left_gets_the_leave_maintenance() -> None:
    # Serf's failed -> left flap of a graceful leave: the suspect's drain becomes the
    # leave's maintenance; the drain timeout applies, not the failed grace.
    p = plan([KEEPER, st("a", admin=ADMIN_FDRAIN, sessions=5)], want(KEEPER_SRV, leaving=["a"]),
             now=105.0, drain_started={"a": 99.0}, drain_timeout=30.0, failed_grace=2.0,
             held_by_us=frozenset({"a"}))
    assert p == Plan(maint=("a",))


def test_suspect_server_stays_in_the_file() -> None:
    actual = [KEEPER, st("a", "10.0.0.2", sessions=1)]
    desired = DesiredState({"keeper": KEEPER_SRV}, frozenset(), frozenset({"a"}), (), False,
                           {"keeper": KEEPER_SRV, "a": srv("a", "10.0.0.2")})
    p = plan(actual, desired, failed_grace=2.0)
    assert [s.name for s in servers_after(p, actual, desired, {})] == ["a", "keeper"]


# --- member back / maintenance -----------------------------------------------------------


def test_operator_maintenance_on_a_desired_server_is_left_alone() -> None:
    # Runtime changes an operator made are not lbsync's to undo.
    p = plan([st("a", admin=ADMIN_FMAINT, op=OP_STOPPED)], want(srv("a")))
    assert p == Plan()


@pytest.mark.parametrize("admin", [ADMIN_IMAINT, ADMIN_CMAINT])
def test_other_maintenance_sources_are_not_enabled(admin: int) -> None:
    # Only FMAINT is lbsync's (or an operator's `set server ... state maint`) doing.
    assert plan([st("a", admin=admin)], want(srv("a"))) == Plan()


@pytest.mark.parametrize("admin", [ADMIN_FDRAIN, ADMIN_FMAINT])
def test_hold_lbsync_set_whose_member_is_back_is_undone(admin: int) -> None:
    p = plan([st("a", admin=admin, sessions=2)], want(srv("a")), held_by_us=frozenset({"a"}))
    assert p == Plan(undrain=("a",))


def test_removal_whose_member_is_back_is_undone() -> None:
    p = plan([st("a", admin=ADMIN_FMAINT)], want(srv("a")), held_by_us=frozenset({"a"}),
             removing=frozenset({"a"}))
    assert p == Plan(undrain=("a",))


@pytest.mark.parametrize("admin", [ADMIN_FDRAIN, ADMIN_FMAINT])
def test_hold_set_outside_lbsync_is_left_alone(admin: int) -> None:
    # A node's agent-check answering `maint` (it is stopping), or an operator.
    p = plan([st("a", admin=admin, sessions=2)], want(srv("a")), held_by_us=frozenset({"b"}))
    assert p == Plan()


# --- weights -----------------------------------------------------------------------------


def test_weight_change_against_haproxy_weight() -> None:
    p = plan([st("a", weight=100)], want(srv("a", weight=50)))
    assert p == Plan(weights=(WeightUpdate("a", 50),))


def test_weight_change_against_applied_weight() -> None:
    p = plan([st("a", weight=100)], want(srv("a", weight=50)), applied_weights={"a": 20})
    assert p.weights == (WeightUpdate("a", 50),)


def test_weight_not_reemitted_when_already_applied_even_if_haproxy_differs() -> None:
    # An agent-check moved HAProxy's figure; lbsync must not fight it.
    p = plan([st("a", weight=37)], want(srv("a", weight=50)), applied_weights={"a": 50})
    assert p == Plan()


def test_weight_equal_in_haproxy_without_applied_record() -> None:
    assert plan([st("a", weight=50)], want(srv("a", weight=50))) == Plan()


# --- address -----------------------------------------------------------------------------


@pytest.mark.parametrize(("addr", "port"), [("10.0.0.7", 8080), ("10.0.0.1", 9090),
                                            ("2001:db8::1", 1)])
def test_address_change(addr: str, port: int) -> None:
    p = plan([st("a", "10.0.0.1", 8080)], want(srv("a", addr, port)))
    assert p == Plan(addrs=(AddrUpdate("a", addr, port),))


# --- never empty -------------------------------------------------------------------------


def test_all_leaving_keeps_them_and_does_nothing_else() -> None:
    p = plan([st("a"), st("b", admin=ADMIN_FDRAIN, sessions=0)],
             want(leaving=["a", "b"]), drain_started={"b": 0.0})
    assert p == Plan(kept=("a", "b"))
    assert p.empty


def test_all_failed_are_kept_too() -> None:
    p = plan([st("a"), st("b")], want(failed=["a"], leaving=["b"]))
    assert p == Plan(kept=("a", "b"))


def test_all_vanished_are_kept() -> None:
    assert plan([st("a")], want()) == Plan(kept=("a",))


def test_all_going_with_an_add_proceeds() -> None:
    new = srv("c", "10.0.0.3")
    p = plan([st("a"), st("b")], want(new, leaving=["a"], failed=["b"]))
    assert p == Plan(add=(new,), maint=("a",), suspect=("b",))


def test_one_staying_server_lets_the_others_go() -> None:
    p = plan([st("a"), st("b"), st("c", admin=ADMIN_FMAINT, sessions=0)],
             want(srv("a"), leaving=["b"]), drain_started={"c": 0.0})
    assert p == Plan(maint=("b",), remove=("c",))


def test_staying_server_in_maintenance_still_counts_as_staying() -> None:
    p = plan([st("a", admin=ADMIN_FMAINT), st("b")], want(srv("a"), leaving=["b"]))
    assert p == Plan(maint=("b",))


# --- everything at once ------------------------------------------------------------------


def test_mixed_plan() -> None:
    actual = [
        st("add-me-not"),  # vanished from membership: maintenance
        st("back", admin=ADMIN_FDRAIN, sessions=1),
        st("dead", admin=ADMIN_FDRAIN, op=OP_STOPPED, sessions=9),
        st("heavy", weight=10),
        st("moved", "10.0.0.5"),
        st("slow", admin=ADMIN_FMAINT, sessions=2),
    ]
    desired = want(srv("back"), srv("heavy", weight=200), srv("moved", "10.0.0.6"),
                   srv("new"), leaving=["slow"], failed=["dead"])
    p = plan(actual, desired, now=10.0, drain_started={"slow": 5.0, "dead": 5.0},
             held_by_us=frozenset({"back", "slow", "dead"}))
    assert p == Plan(
        add=(srv("new"),), undrain=("back",), maint=("add-me-not",), kill=("dead",),
        weights=(WeightUpdate("heavy", 200),), addrs=(AddrUpdate("moved", "10.0.0.6", 8080),),
        waiting=("slow",),
    )


# --- servers_after -----------------------------------------------------------------------


def test_servers_after_lists_desired_and_draining_but_not_removed() -> None:
    actual = [st("a"), st("drain-now", "10.0.0.2", 9001, weight=30),
              st("waiting", "10.0.0.3", admin=ADMIN_FMAINT, sessions=4),
              st("done", admin=ADMIN_FMAINT, sessions=0),
              st("dead", admin=ADMIN_FDRAIN, op=OP_STOPPED, sessions=1)]
    desired = want(srv("a"), srv("new", "10.0.0.4"),
                   leaving=["drain-now", "waiting", "done"], failed=["dead"])
    p = plan(actual, desired, now=1.0, drain_started={"waiting": 0.5, "dead": 0.5})
    assert (p.maint, p.waiting, p.remove, p.kill) == (
        ("drain-now",), ("waiting",), ("done",), ("dead",))
    after = servers_after(p, actual, desired, {"waiting": 60})
    assert after == [
        srv("a"),
        srv("drain-now", "10.0.0.2", 9001, 30),  # HAProxy's weight when none was applied
        srv("new", "10.0.0.4"),
        srv("waiting", "10.0.0.3", 8080, 60),  # the weight lbsync gave it
    ]


def test_servers_after_keeps_kept_servers() -> None:
    actual = [st("a", "10.0.0.1", 81), st("b", "10.0.0.2", 82)]
    desired = want(leaving=["a"], failed=["b"])
    p = plan(actual, desired)
    assert p.kept == ("a", "b")
    assert servers_after(p, actual, desired, {}) == [srv("a", "10.0.0.1", 81),
                                                     srv("b", "10.0.0.2", 82)]


def test_servers_after_uses_node_name_cookie_in_explicit_mode() -> None:
    actual = [st("a"), st("b")]
    desired = want(srv("a", cookie="a"), leaving=["b"], explicit=True)
    p = plan(actual, desired)
    after = servers_after(p, actual, desired, {})
    assert [(s.name, s.cookie) for s in after] == [("a", "a"), ("b", "b")]


def test_servers_after_uses_desired_address_for_moved_server() -> None:
    actual = [st("a", "10.0.0.1")]
    desired = want(srv("a", "10.0.0.2"))
    p = plan(actual, desired)
    assert servers_after(p, actual, desired, {}) == [srv("a", "10.0.0.2")]


# --- a damaged registry file -------------------------------------------------------------


def test_a_member_whose_registry_file_is_unreadable_keeps_its_server() -> None:
    actual = [KEEPER, st("a", sessions=3)]
    p = make_plan(actual, want(KEEPER_SRV), Holds(), Timeouts(30.0), now=100.0,
                  unreadable=frozenset({"a"}))
    assert p == Plan()
    # Readable again and really gone: the normal leave.
    p = make_plan(actual, want(KEEPER_SRV), Holds(), Timeouts(30.0), now=100.0)
    assert p.maint == ("a",)
