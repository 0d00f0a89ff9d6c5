"""lbsync.metrics: the bookkeeping with plain values, the scrape-time gauges with fake views,
and the HTTP endpoint on a loopback port."""

from __future__ import annotations

import socket
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence

import pytest

from lbsync import __version__
from lbsync.apply import Outcome, Step
from lbsync.desired import member_server
from lbsync.metrics import (
    ACTIONS,
    EVENT_TYPES,
    STATES,
    Metrics,
    MetricsError,
    MetricsServer,
    Views,
    fleet_view,
    refusal_kind,
)
from lbsync.model import (
    ADMIN_FMAINT,
    OP_RUNNING,
    OP_STOPPED,
    LbsyncError,
    Member,
    MemberStatus,
    Plan,
    Refusal,
    ServerState,
)
from lbsync.reconcile import TickResult
from lbsync.render import load_template, render_haproxy
from lbsync.settings import Settings, parse_cidrs
from lbsync.validate import name_problem
from tests.rig.procs import free_port

S = Settings()
V = (2, 6, 12)


def step(action: str, server: str = "n1") -> Step:
    return Step(action, server, "", ())


def st(name: str, *, admin: int = 0, op: int = OP_RUNNING, addr: str = "10.0.0.1",
       sessions: int = 0) -> ServerState:
    return ServerState("nodes", name, addr, 8080, op, admin, 100, 100, sessions)


def edge(name: str, addr: str = "10.0.0.1",
         status: MemberStatus = MemberStatus.ALIVE) -> Member:
    return Member(name, addr, {"role": "edge"}, status)


def config_with(*names: str) -> str:
    label, source = load_template(None)
    servers = [member_server(edge(n, f"10.0.0.{i + 1}"), S, False) for i, n in enumerate(names)]
    return render_haproxy(label, source, S, servers, False)  # type: ignore[arg-type]


# --- bookkeeping -------------------------------------------------------------------------


def test_every_series_exists_at_zero_from_the_start() -> None:
    m = Metrics()
    for kind in EVENT_TYPES:
        assert m.registry.get_sample_value("lbsync_membership_events_total",
                                           {"type": kind}) == 0.0
    for op in ACTIONS:
        for result in ("ok", "error", "retry"):
            assert m.registry.get_sample_value("lbsync_runtime_ops_total",
                                               {"op": op, "result": result}) == 0.0
    assert m.registry.get_sample_value("lbsync_reloads_total") == 0.0
    assert m.registry.get_sample_value("lbsync_last_good_pass_timestamp_seconds") == 0.0
    assert m.registry.get_sample_value("lbsync_reconcile_passes_total", {"result": "ok"}) == 0.0


def test_each_agent_has_its_own_registry() -> None:
    a, b = Metrics(), Metrics()
    a.member_event("member-join")
    assert a.value("lbsync_membership_events_total", type="member-join") == 1
    assert b.value("lbsync_membership_events_total", type="member-join") == 0


def test_member_events_by_type() -> None:
    m = Metrics()
    for kind in ("member-join", "member-join", "member-leave", "member-reap"):
        m.member_event(kind)
    assert m.value("lbsync_membership_events_total", type="member-join") == 2
    assert m.value("lbsync_membership_events_total", type="member-leave") == 1
    assert m.value("lbsync_membership_events_total", type="member-reap") == 1
    assert m.value("lbsync_membership_events_total", type="member-failed") == 0


def test_a_good_pass() -> None:
    m = Metrics()
    result = TickResult(Plan(), busy=False, outcomes=(
        Outcome(step("add"), None), Outcome(step("add", "n2"), None),
        Outcome(step("drain", "n3"), None)))
    m.observe_pass(result, 0.004, now=1_700_000_000.5)
    assert m.value("lbsync_reconcile_passes_total", result="ok") == 1
    assert m.value("lbsync_reconcile_passes_total", result="error") == 0
    assert m.value("lbsync_runtime_ops_total", op="add", result="ok") == 2
    assert m.value("lbsync_runtime_ops_total", op="drain", result="ok") == 1
    assert m.value("lbsync_reconcile_duration_seconds_count") == 1
    assert m.value("lbsync_reconcile_duration_seconds_sum") == pytest.approx(0.004)
    assert m.value("lbsync_reconcile_duration_seconds_bucket", le="0.005") == 1
    assert m.value("lbsync_reconcile_duration_seconds_bucket", le="0.0025") == 0
    assert m.value("lbsync_last_good_pass_timestamp_seconds") == 1_700_000_000.5
    assert m.value("lbsync_reloads_total") == 0


def test_refused_commands_and_the_attached_del_retry() -> None:
    m = Metrics()
    result = TickResult(Plan(), busy=True, problem="HAProxy refused 1 command(s)", outcomes=(
        Outcome(step("del"), "'del server nodes/n1': Server still has connections attached "
                "to it, cannot remove it."),
        Outcome(step("weight", "n2"), "'set weight nodes/n2 7': No such server."),
    ))
    m.observe_pass(result, 0.01, now=5.0)
    assert m.value("lbsync_runtime_ops_total", op="del", result="retry") == 1
    assert m.value("lbsync_runtime_ops_total", op="del", result="error") == 0
    assert m.value("lbsync_runtime_ops_total", op="weight", result="error") == 1
    assert m.value("lbsync_reconcile_passes_total", result="error") == 1
    assert m.value("lbsync_last_good_pass_timestamp_seconds") == 0, "not a good pass"


def test_reloads_and_failed_passes() -> None:
    m = Metrics()
    m.observe_pass(TickResult(Plan(), busy=False, reloaded=True), 0.2, now=10.0)
    m.failed_pass(0.5)
    assert m.value("lbsync_reloads_total") == 1
    assert m.value("lbsync_reconcile_passes_total", result="ok") == 1
    assert m.value("lbsync_reconcile_passes_total", result="error") == 1
    assert m.value("lbsync_reconcile_duration_seconds_count") == 2
    assert m.value("lbsync_last_good_pass_timestamp_seconds") == 10.0


def test_refusals_count_once_per_member_and_reason() -> None:
    m = Metrics()
    bad_port = Refusal("n2", "tag port 99999 is outside 1-65535")
    for _ in range(3):  # every pass and every resync repeats the refusals
        m.refused([bad_port, Refusal("bad;name", name_problem("bad;name") or "")])
    m.observe_pass(TickResult(Plan(), busy=False, refused=(bad_port,)), 0.001, now=1.0)
    assert m.value("lbsync_refused_members_total", reason="port") == 1
    assert m.value("lbsync_refused_members_total", reason="name") == 1
    m.refused([Refusal("n2", "tag port 0 is outside 1-65535")])  # another reason: news
    assert m.value("lbsync_refused_members_total", reason="port") == 2


def _reasons() -> Iterator[tuple[str, str]]:
    def refusal(m: Member, settings: Settings = S) -> str:
        r = member_server(m, settings, False)
        assert isinstance(r, Refusal), r
        return r.reason

    yield refusal(Member("a b", "10.0.0.1")), "name"
    yield refusal(Member("", "10.0.0.1")), "name"
    yield refusal(Member("n" * 64, "10.0.0.1")), "name"
    yield refusal(Member("n", "10.0.0.1", {"role": "a;b"})), "tags"
    yield refusal(Member("n", "10.0.0.1", {"k y": "v"})), "tags"
    yield refusal(Member("n", "10.0.0.1", {"port": "a;b"})), "tags"
    yield refusal(Member("n", "not-an-ip")), "address"
    yield refusal(Member("n", "10.0.0.1"), Settings(allow_cidr=parse_cidrs("192.0.2.0/24"))), \
        "address"
    yield refusal(Member("n", "10.0.0.1", {"port": "99999"})), "port"
    yield refusal(Member("n", "10.0.0.1", {"port": "http"})), "port"
    yield refusal(Member("n", "10.0.0.1", {"weight": "heavy"})), "weight"
    yield refusal(Member("n", "10.0.0.1", {"weight": "300"})), "weight"
    yield refusal(Member("n", "10.0.0.1", {"agent-port": "0"})), "agent-port"
    yield "something new", "other"


@pytest.mark.parametrize(("reason", "kind"), list(_reasons()))
def test_refusal_kind_from_the_real_reasons(reason: str, kind: str) -> None:
    assert refusal_kind(reason) == kind


def test_build_info() -> None:
    m = Metrics()
    m.set_build((2, 6, 12))
    labels = {"version": __version__, "haproxy_version": "2.6.12"}
    samples = [s for f in m.registry.collect() if f.name == "lbsync_build"
               for s in f.samples]
    assert len(samples) == 1
    assert samples[0].name == "lbsync_build_info" and samples[0].value == 1
    assert labels.items() <= samples[0].labels.items()


# --- the fleet as it stands (pure) -------------------------------------------------------


def test_fleet_view_counts_states_statuses_and_drift() -> None:
    members = {"a": edge("a"), "b": edge("b", "10.0.0.2"),
               "c": edge("c", "10.0.0.3", MemberStatus.LEFT),
               "lb": Member("lb", "10.0.0.9", {"role": "lb"})}
    actual = [st("a"), st("b", addr="10.0.0.2", op=OP_STOPPED),
              st("c", addr="10.0.0.3", admin=ADMIN_FMAINT, op=OP_STOPPED, sessions=1)]
    view = fleet_view(members, actual, config_with("a", "b", "c"), S, V)
    assert view.servers == {"UP": 1, "DOWN": 1, "DRAIN": 0, "MAINT": 1}
    assert view.members == {"alive": 3, "leaving": 0, "left": 1, "failed": 0, "none": 0}
    assert view.drift == 0  # c's last session ends: lbsync is at work, not drifting
    actual[2] = st("c", addr="10.0.0.3", admin=ADMIN_FMAINT)  # no session, still there
    assert fleet_view(members, actual, config_with("a", "b", "c"), S, V).drift == 1


def test_fleet_view_drift_is_what_status_check_counts() -> None:
    members = {"a": edge("a"), "b": edge("b", "10.0.0.2")}
    # b is alive but not in HAProxy; d is in HAProxy (maintenance) and in no other view.
    actual = [st("a"), st("d", addr="10.0.0.4", admin=ADMIN_FMAINT)]
    view = fleet_view(members, actual, config_with("a"), S, V)
    assert view.drift == 2
    assert view.servers is not None and view.servers["MAINT"] == 1


def test_fleet_view_with_a_view_missing() -> None:
    view = fleet_view(None, [st("a")], None, S, V)
    assert view.servers == dict.fromkeys(STATES, 0) | {"UP": 1}
    assert view.members is None and view.drift is None
    assert fleet_view({"a": edge("a")}, None, "", S, V).drift is None


# --- scrape-time gauges through fake views -----------------------------------------------


class FakeViews:
    def __init__(self) -> None:
        self.members_: dict[str, Member] = {"a": edge("a")}
        self.servers_: list[ServerState] = [st("a")]
        self.config = config_with("a")
        self.haproxy_down = False

    def members(self) -> Mapping[str, Member]:
        return self.members_

    def servers(self) -> Sequence[ServerState]:
        if self.haproxy_down:
            raise LbsyncError("cannot connect to HAProxy")
        return self.servers_

    def views(self) -> Views:
        return Views(self.members, self.servers, lambda: self.config, S, (2, 6, 12))


def test_gauges_are_read_at_each_scrape() -> None:
    m, fake = Metrics(), FakeViews()
    m.watch(fake.views())
    assert m.value("lbsync_servers", state="UP") == 1
    assert m.value("lbsync_serf_members", status="alive") == 1
    assert m.value("lbsync_drift_members") == 0
    fake.members_["b"] = edge("b", "10.0.0.2")  # joined, not yet in HAProxy: drift
    assert m.value("lbsync_drift_members") == 1
    fake.servers_.append(st("b", addr="10.0.0.2"))
    fake.config = config_with("a", "b")
    assert m.value("lbsync_servers", state="UP") == 2
    assert m.value("lbsync_drift_members") == 0
    assert m.value("lbsync_source_up", source="haproxy") == 1


def test_a_view_that_fails_is_reported_not_raised() -> None:
    m, fake = Metrics(), FakeViews()
    m.watch(fake.views())
    fake.haproxy_down = True
    assert m.registry.get_sample_value("lbsync_servers", {"state": "UP"}) is None
    assert m.registry.get_sample_value("lbsync_drift_members") is None
    assert m.value("lbsync_source_up", source="haproxy") == 0
    assert m.value("lbsync_source_up", source="serf") == 1
    assert m.value("lbsync_serf_members", status="alive") == 1
    fake.haproxy_down = False
    assert m.value("lbsync_servers", state="UP") == 1


# --- the HTTP endpoint -------------------------------------------------------------------


def test_server_serves_the_registry_and_stops() -> None:
    m = Metrics()
    m.member_event("member-join")
    port = free_port()
    server = MetricsServer(f"127.0.0.1:{port}", m.registry)
    server.start()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            text = r.read().decode()
            assert r.headers["Content-Type"].startswith("text/plain")
        assert 'lbsync_membership_events_total{type="member-join"} 1.0' in text
        assert "# HELP lbsync_reloads_total " in text
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/other", timeout=5)
        assert info.value.code == 404
    finally:
        server.stop()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()


def test_port_in_use_is_one_clear_error() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(MetricsError, match=rf"^--metrics-bind: cannot listen on "
                           rf"127\.0\.0\.1:{port} \(Address already in use\)$"):
            MetricsServer(f"127.0.0.1:{port}", Metrics().registry)


@pytest.mark.parametrize("bind", ["nope", "127.0.0.1:0", "127.0.0.1:70000", "*:x"])
def test_bad_bind_is_a_settings_error(bind: str) -> None:
    with pytest.raises(LbsyncError, match="^--metrics-bind: "):
        MetricsServer(bind, Metrics().registry)


def test_unknown_host_is_one_clear_error() -> None:
    with pytest.raises(MetricsError, match="^--metrics-bind: cannot listen on no-such-host."):
        MetricsServer("no-such-host.invalid:9180", Metrics().registry)


# --- the Grafana dashboard ---------------------------------------------------------------


def test_dashboard_queries_name_only_metrics_the_agent_serves() -> None:
    import json
    import re
    from pathlib import Path

    from prometheus_client import generate_latest

    dashboard = Path(__file__).resolve().parents[2] / "dashboards" / "lbsync.json"
    exprs = [t["expr"] for p in json.loads(dashboard.read_text())["panels"]
             for t in p["targets"]]
    used = {n for e in exprs for n in re.findall(r"(?<![$\w])lbsync_[a-z_]+", e)}
    m = Metrics()
    m.watch(FakeViews().views())
    served = {line.split("{")[0].split(" ")[0]
              for line in generate_latest(m.registry).decode().splitlines()
              if line and not line.startswith("#")}
    assert used and used <= served, used - served
