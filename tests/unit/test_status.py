"""lbsync.status: rows and drift between Serf (members), HAProxy (actual) and haproxy.cfg."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import pytest

from lbsync.haproxy.certs import CertInfo
from lbsync.model import (
    ADMIN_FDRAIN,
    ADMIN_FMAINT,
    OP_RUNNING,
    OP_STOPPED,
    Member,
    MemberStatus,
    ServerState,
)
from lbsync.render import BEGIN, END, load_template, render_haproxy
from lbsync.settings import Settings
from lbsync.status import (
    Row,
    cert_rows,
    config_servers,
    format_certs,
    format_table,
    status_rows,
)

S = Settings()
V = (2, 6, 12)


def member(name: str, addr: str = "10.0.0.1", status: MemberStatus = MemberStatus.ALIVE,
           **tags: str) -> Member:
    return Member(name, addr, {"role": "edge", **tags}, status)


def st(name: str, addr: str = "10.0.0.1", port: int = 8080, *, admin: int = 0,
       op: int = OP_RUNNING, sessions: int = 0, weight: int = 100) -> ServerState:
    return ServerState("nodes", name, addr, port, op, admin, weight, weight, sessions)


def rows(members: Sequence[Member], actual: Sequence[ServerState],
         in_config: set[str]) -> dict[str, Row]:
    out = status_rows({m.name: m for m in members}, actual, in_config, S, V)
    assert [r.name for r in out] == sorted(r.name for r in out)
    return {r.name: r for r in out}


def test_all_in_sync() -> None:
    r = rows([member("a"), member("b", "10.0.0.2")], [st("a"), st("b", "10.0.0.2")], {"a", "b"})
    assert r == {
        "a": Row("a", "alive", "UP", True, "ok", False),
        "b": Row("b", "alive", "UP", True, "ok", False),
    }


def test_weight_moved_by_agent_check_is_not_drift() -> None:
    r = rows([member("a", weight="50")], [st("a", weight=7)], {"a"})
    assert r["a"].drift is False


def test_alive_member_missing_from_haproxy_is_drift() -> None:
    r = rows([member("a"), member("b", "10.0.0.2")], [st("a")], {"a", "b"})
    assert r["b"] == Row("b", "alive", "-", True, "member is alive but not in HAProxy; "
                         "only haproxy.cfg has it", True)
    assert r["a"].drift is False


def test_alive_member_missing_everywhere_is_drift() -> None:
    r = rows([member("a"), member("b", "10.0.0.2")], [st("a")], {"a"})
    assert r["b"] == Row("b", "alive", "-", False, "member is alive but not in HAProxy", True)


def test_in_haproxy_but_missing_from_config_is_drift() -> None:
    r = rows([member("a"), member("b", "10.0.0.2")], [st("a"), st("b", "10.0.0.2")], {"a"})
    assert r["b"] == Row("b", "alive", "UP", False, "haproxy.cfg lacks it", True)


def test_leaving_in_maintenance_with_sessions_is_not_drift() -> None:
    r = rows([member("a"), member("b", status=MemberStatus.LEFT)],
             [st("a"), st("b", admin=ADMIN_FMAINT, op=OP_STOPPED, sessions=3)], {"a", "b"})
    assert r["b"] == Row("b", "left", "MAINT", True, "leaving: waiting for its sessions to end",
                         False)


def test_leaving_but_still_in_rotation_is_drift() -> None:
    r = rows([member("a"), member("b", status=MemberStatus.LEAVING)],
             [st("a"), st("b")], {"a", "b"})
    assert r["b"] == Row("b", "leaving", "UP", True, "leaving but not in maintenance", True)


def test_leaving_but_only_drained_is_drift() -> None:
    # Drain still takes the clients that carry its cookie.
    r = rows([member("a"), member("b", status=MemberStatus.LEFT)],
             [st("a"), st("b", admin=ADMIN_FDRAIN, sessions=3)], {"a", "b"})
    assert r["b"] == Row("b", "left", "DRAIN", True, "leaving but not in maintenance", True)


def test_drained_but_not_removed_is_drift() -> None:
    r = rows([member("a"), member("b", status=MemberStatus.LEFT)],
             [st("a"), st("b", admin=ADMIN_FMAINT, sessions=0)], {"a", "b"})
    assert r["b"].note == "drained but not removed"
    assert r["b"].drift is True


def test_failed_member_whose_check_passes_keeps_its_sessions_not_drift() -> None:
    r = rows([member("a"), member("b", status=MemberStatus.FAILED)],
             [st("a"), st("b", admin=ADMIN_FDRAIN, sessions=2)], {"a", "b"})
    assert r["b"] == Row("b", "failed", "DRAIN", True, "failed in Serf, HAProxy's check "
                         "passes: sessions kept (at most --failed-timeout)", False)


def test_failed_member_whose_check_fails_too_is_drift() -> None:
    r = rows([member("a"), member("b", status=MemberStatus.FAILED)],
             [st("a"), st("b", admin=ADMIN_FDRAIN, op=OP_STOPPED, sessions=2)], {"a", "b"})
    assert (r["b"].note, r["b"].drift) == ("failed but still in HAProxy", True)


def test_kept_last_servers_are_not_drift() -> None:
    r = rows([member("a", status=MemberStatus.LEFT), member("b", status=MemberStatus.FAILED)],
             [st("a"), st("b", op=OP_STOPPED)], {"a", "b"})
    assert r["a"] == Row("a", "left", "UP", True, "kept: the last servers of the backend", False)
    assert r["b"] == Row("b", "failed", "DOWN", True, "kept: the last servers of the backend",
                         False)


def test_servers_serf_does_not_know_at_all_are_drift() -> None:
    # The lb's Serf agent restarted with an empty member list: HAProxy keeps its last
    # servers (right), but status must not call that fine.
    r = rows([], [st("a"), st("b")], {"a", "b"})
    assert r["a"] == Row("a", "-", "UP", True,
                         "Serf does not know it; kept: the last servers of the backend", True)
    assert r["b"].drift is True


def test_failed_still_in_haproxy_is_drift() -> None:
    r = rows([member("a"), member("b", "10.0.0.2", MemberStatus.FAILED)],
             [st("a"), st("b", "10.0.0.2", op=OP_STOPPED)], {"a", "b"})
    assert r["b"] == Row("b", "failed", "DOWN", True, "failed but still in HAProxy", True)


def test_failed_and_gone_is_fine() -> None:
    r = rows([member("a"), member("b", status=MemberStatus.FAILED)], [st("a")], {"a"})
    assert r["b"] == Row("b", "failed", "-", False, "ok", False)


def test_operator_maintenance_on_alive_member_is_shown_not_drift() -> None:
    r = rows([member("a")], [st("a", admin=ADMIN_FMAINT)], {"a"})
    assert r["a"] == Row("a", "alive", "MAINT", True,
                         "maintenance set outside lbsync (operator or agent-check)", False)


def test_agent_drain_on_alive_member_is_shown_not_drift() -> None:
    r = rows([member("a")], [st("a", admin=ADMIN_FDRAIN)], {"a"})
    assert r["a"].note == "draining set outside lbsync (operator or agent-check)"
    assert r["a"].drift is False


def test_address_mismatch_is_drift() -> None:
    r = rows([member("a", "10.0.0.5", port="9000")], [st("a", "10.0.0.1", 8080)], {"a"})
    assert r["a"].note == "HAProxy has another address than 10.0.0.5:9000"
    assert r["a"].drift is True


def test_unknown_server_in_haproxy() -> None:
    r = rows([member("a")], [st("a"), st("stray")], {"a", "stray"})
    assert r["stray"] == Row("stray", "-", "UP", True, "leaving but not in maintenance", True)


def test_refused_member_is_shown_with_its_reason() -> None:
    r = rows([member("a"), member("bad", "not-an-ip")], [st("a")], {"a"})
    assert r["bad"].serf == "alive"
    assert r["bad"].haproxy == "-"
    assert r["bad"].note.startswith("refused: address 'not-an-ip' is not an IP address")
    assert r["bad"].drift is False


def test_refused_member_with_a_bad_name_is_shown() -> None:
    r = rows([member("a"), member("b c")], [st("a")], {"a"})
    assert "b c" in r
    assert r["b c"].note.startswith("refused: node name")


def test_refused_member_still_in_haproxy_keeps_its_drift() -> None:
    # Its tags turned invalid while it served: lbsync will drain it, so status must still
    # call it drift (the refusal note must not hide what lbsync is about to do).
    r = rows([member("a"), member("b", "10.0.0.2", port="http")],
             [st("a"), st("b", "10.0.0.2")], {"a", "b"})
    assert "refused" in r["b"].note
    assert r["b"].drift is True


def test_other_roles_are_not_listed() -> None:
    others = Member("db", "10.0.0.7", {"role": "db"})
    assert "db" not in rows([member("a"), others], [st("a")], {"a"})


def test_format_table() -> None:
    table = format_table([Row("a", "alive", "UP", True, "ok", False, "2/2"),
                          Row("long-name", "-", "-", False, "member is alive", True)])
    assert table.splitlines() == [
        "MEMBER     SERF   HAPROXY  CONFIG  LINKS  NOTE",
        "a          alive  UP       yes     2/2    ok",
        "long-name  -      -        no      -      DRIFT: member is alive",
    ]


def test_the_links_column_is_the_members_links_tag() -> None:
    a = Member("a", "10.0.0.1", {"role": "edge", "port": "8080", "links": "1/2"})
    assert rows([a], [st("a")], {"a"})["a"].links == "1/2"
    assert rows([member("b")], [st("b")], {"b"})["b"].links == "-"


def test_format_table_no_rows() -> None:
    assert format_table([]) == "MEMBER  SERF  HAPROXY  CONFIG  LINKS  NOTE"


# --- config_servers ----------------------------------------------------------------------


def test_config_servers_reads_only_between_markers() -> None:
    text = "\n".join([
        "backend other",
        "    server outside 10.0.0.9:80 check",
        f"    {BEGIN}",
        "    server a 10.0.0.1:8080 check inter 1000 fall 2 rise 1 weight 100",
        "\tserver b.x 10.0.0.2:8080 weight 1",
        "    # server commented 10.0.0.3:80",
        "    server-template x 3 10.0.0.1:80",
        "    serverless 10.0.0.4:80",
        f"    {END}",
        "    server after 10.0.0.5:80",
    ])
    assert config_servers(text) == {"a", "b.x"}


def test_config_servers_without_markers_is_empty() -> None:
    assert config_servers("backend x\n    server a 10.0.0.1:80\n") == set()


def test_config_servers_of_a_real_render() -> None:
    from lbsync.model import Server

    label, source = load_template(None)
    text = render_haproxy(label, source, S, [Server("a", "10.0.0.1", 80),
                                             Server("b", "::1", 81, 1, "b")], True)
    assert config_servers(text) == {"a", "b"}


# --- certificates ------------------------------------------------------------------------


def _cert(name: str, days_left: float) -> tuple[CertInfo, datetime]:
    now = datetime(2026, 6, 1, tzinfo=UTC)
    return CertInfo(f"/etc/lb/{name}.pem", f"/CN={name}", "/CN=ca", "0A",
                    now - timedelta(days=30), now + timedelta(days=days_left),
                    (name, f"www.{name}"), "AB" * 20), now


@pytest.mark.parametrize(("days_left", "expiring", "problem"), [
    (30.0, False, None),
    (14.5, False, None),
    (14.0, True, "expires on 2026-06-15 00:00 UTC, in 14.0 days"),
    (0.5, True, "expires on 2026-06-01 12:00 UTC, in 0.5 days"),
    (-2.0, True, "expired on 2026-05-30 00:00 UTC"),
])
def test_cert_rows_hold_each_certificate_to_the_margin(
        days_left: float, expiring: bool, problem: str | None) -> None:
    info, now = _cert("a.example", days_left)
    (row,) = cert_rows([info], now, 14)
    assert row.expiring is expiring
    assert row.names == "a.example,www.a.example"
    if problem:
        assert row.problem == f"certificate /etc/lb/a.example.pem (/CN=a.example) {problem}"


def test_format_certs_one_line_each_sorted_by_file() -> None:
    (b, now), (a, _) = _cert("b.example", 3.2), _cert("a.example", 60)
    text = format_certs(cert_rows([b, a], now, 14), 14)
    lines = text.splitlines()
    assert lines[0].split() == ["CERTIFICATE", "SUBJECT", "NAMES", "NOT", "AFTER", "NOTE"]
    assert lines[1].startswith("/etc/lb/a.example.pem") and lines[1].endswith("ok, 60 days left")
    assert lines[2].startswith("/etc/lb/b.example.pem")
    assert lines[2].endswith("EXPIRES in 3 days (margin 14)")
    assert "2026-06-04 04:48 UTC" in lines[2]
