"""lbsync.desired: members + settings -> the servers the managed backend should hold."""

from __future__ import annotations

import dataclasses
import ipaddress

import pytest

from lbsync.desired import desired_state, explicit_cookies, member_server, server_args
from lbsync.model import DesiredState, Member, MemberStatus, Refusal, Server
from lbsync.settings import Settings

S = Settings()
V26 = (2, 6, 12)
V30 = (3, 0, 5)


def edge(name: str, addr: str = "10.0.0.1", status: MemberStatus = MemberStatus.ALIVE,
         **tags: str) -> Member:
    return Member(name, addr, {"role": "edge", **tags}, status)


def ds(*members: Member, settings: Settings = S,
       version: tuple[int, ...] = V26) -> DesiredState:
    return desired_state({m.name: m for m in members}, settings, version)


# --- which members serve -----------------------------------------------------------------


def test_role_filter_skips_other_roles_silently() -> None:
    d = ds(edge("e1"), Member("db1", "10.0.0.2", {"role": "db"}),
           Member("norole", "10.0.0.3", {}), Member("lb", "10.0.0.4", {"role": "Edge"}))
    assert list(d.servers) == ["e1"]
    assert d.refused == ()
    assert d.leaving == d.failed == frozenset()


def test_role_comes_from_settings() -> None:
    d = ds(edge("e1"), Member("w1", "10.0.0.2", {"role": "web"}),
           settings=Settings(role="web"))
    assert list(d.servers) == ["w1"]


def test_defaults_for_port_and_weight() -> None:
    d = ds(edge("e1"), settings=Settings(default_port=9000, default_weight=7))
    assert d.servers["e1"] == Server("e1", "10.0.0.1", 9000, 7, None)


def test_port_and_weight_tags_override_defaults() -> None:
    d = ds(edge("e1", port="8443", weight="0"), edge("e2", weight="256", port="1"))
    assert d.servers["e1"] == Server("e1", "10.0.0.1", 8443, 0)
    assert d.servers["e2"] == Server("e2", "10.0.0.1", 1, 256)


def test_servers_keyed_and_ordered_by_name() -> None:
    d = ds(edge("c"), edge("a"), edge("b"))
    assert list(d.servers) == ["a", "b", "c"]
    assert all(k == s.name for k, s in d.servers.items())


def test_ipv6_member() -> None:
    assert ds(edge("e1", "2001:db8::1")).servers["e1"].addr == "2001:db8::1"


# --- statuses ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "where"),
    [(MemberStatus.ALIVE, "servers"), (MemberStatus.LEAVING, "leaving"),
     (MemberStatus.LEFT, "leaving"), (MemberStatus.NONE, "leaving"),
     (MemberStatus.FAILED, "failed")],
)
def test_status_decides_the_group(status: MemberStatus, where: str) -> None:
    d = ds(edge("e1", status=status))
    groups = {"servers": set(d.servers), "leaving": set(d.leaving), "failed": set(d.failed)}
    assert groups == {k: ({"e1"} if k == where else set()) for k in groups}


@pytest.mark.parametrize("ready", ["0", "false", "no", "False", "NO"])
def test_not_ready_tag_means_leaving(ready: str) -> None:
    d = ds(edge("e1", ready=ready))
    assert d.servers == {}
    assert d.leaving == {"e1"}


@pytest.mark.parametrize("ready", ["1", "true", "yes", ""])
def test_ready_tag_otherwise_serves(ready: str) -> None:
    assert list(ds(edge("e1", ready=ready)).servers) == ["e1"]


def test_failed_member_with_ready_0_is_failed_not_leaving() -> None:
    d = ds(edge("e1", status=MemberStatus.FAILED, ready="0"))
    assert d.failed == {"e1"}
    assert d.leaving == frozenset()


def test_other_role_failed_member_is_ignored() -> None:
    d = ds(Member("db", "10.0.0.1", {"role": "db"}, MemberStatus.FAILED))
    assert d.failed == frozenset()


# --- refusals ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("member", "fragment"),
    [
        (edge("e1", port="0"), "tag port 0 is outside 1-65535"),
        (edge("e1", port="70000"), "outside 1-65535"),
        (edge("e1", port="http"), "tag port 'http' is not a number"),
        (edge("e1", weight="257"), "weight 257 is outside 0-256"),
        (edge("e1", weight="-1"), "weight '-1' is not a number"),
        (edge("e1", "not-an-ip"), "is not an IP address"),
        (edge("e1", ""), "is not an IP address"),
        (edge("e1", "10.0.0.1", extra="a b"), "tag extra="),
        (Member("e1", "10.0.0.1", {"role": "edge", "bad key": "x"}), "tag key"),
        (Member("a b", "10.0.0.1", {"role": "edge"}), "node name"),
    ],
)
def test_refusals(member: Member, fragment: str) -> None:
    d = ds(member, edge("ok", "10.0.0.2"))
    assert list(d.servers) == ["ok"]
    assert len(d.refused) == 1
    assert d.refused[0].member == member.name
    assert fragment in d.refused[0].reason
    assert member.name not in d.leaving | d.failed


def test_refused_even_when_leaving_or_failed() -> None:
    d = ds(edge("l1", "bad", status=MemberStatus.LEFT),
           edge("f1", "bad", status=MemberStatus.FAILED))
    assert [r.member for r in d.refused] == ["f1", "l1"]
    assert d.leaving == d.failed == frozenset()


def test_allow_cidr_refuses_outside_addresses() -> None:
    settings = Settings(allow_cidr=(ipaddress.ip_network("10.0.0.0/8"),
                                    ipaddress.ip_network("fd00::/8")))
    d = ds(edge("in4", "10.1.1.1"), edge("in6", "fd00::1"), edge("out4", "192.168.0.1"),
           edge("out6", "2001:db8::1"), settings=settings)
    assert sorted(d.servers) == ["in4", "in6"]
    assert sorted(r.member for r in d.refused) == ["out4", "out6"]
    assert all("--allow-cidr" in r.reason for r in d.refused)


def test_member_server_returns_refusal_type() -> None:
    result = member_server(edge("e1", port="x"), S, explicit=False)
    assert isinstance(result, Refusal)


def test_tag_value_with_trailing_newline_is_refused_not_parsed() -> None:
    # "edge\n" must not pass the tag check; `ready=0\n` would otherwise read as ready.
    d = ds(Member("e1", "10.0.0.1", {"role": "edge", "ready": "0\n"}))
    assert d.servers == {}


# --- cookies -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("version", "explicit"),
    [((2, 6, 12), False), ((2, 9, 99), False), ((3, 0, 0), True), ((3, 0), True),
     ((3, 1, 2), True), ((4, 0, 0), True), ((2, 4), False)],
)
def test_explicit_cookies_from_version(version: tuple[int, ...], explicit: bool) -> None:
    assert explicit_cookies(version) is explicit


def test_explicit_cookie_is_the_node_name_on_3_0() -> None:
    d = ds(edge("e1"), edge("e2", "10.0.0.2"), version=(3, 0, 1))
    assert d.explicit_cookies is True
    assert [s.cookie for s in d.servers.values()] == ["e1", "e2"]


def test_dynamic_cookies_leave_cookie_empty_on_2_6() -> None:
    d = ds(edge("e1"), version=(2, 6, 12))
    assert d.explicit_cookies is False
    assert d.servers["e1"].cookie is None


# --- server_args -------------------------------------------------------------------------


def test_server_args_spelled_out_without_cookie() -> None:
    s = Server("e1", "10.0.0.1", 8080, 50)
    assert server_args(s, S) == ("check inter 1000 downinter 50 fall 2 rise 1"
                                " pool-max-conn -1 pool-purge-delay 5s weight 50")


def test_server_args_with_cookie_and_custom_checks() -> None:
    settings = dataclasses.replace(S, check_inter=0.25, check_fall=5, check_rise=3)
    s = Server("e1", "10.0.0.1", 8080, 100, "e1")
    assert server_args(s, settings) == (
        "check inter 250 downinter 50 fall 5 rise 3 pool-max-conn -1 pool-purge-delay 5s"
        " weight 100 cookie e1")


def test_server_args_downinter_never_exceeds_inter() -> None:
    settings = dataclasses.replace(S, check_inter=0.03)
    assert server_args(Server("e1", "10.0.0.1", 80), settings).startswith(
        "check inter 30 downinter 30 fall ")


def test_server_args_downinter_is_the_setting() -> None:
    settings = dataclasses.replace(S, check_downinter=0.02)
    assert server_args(Server("e1", "10.0.0.1", 80), settings).startswith(
        "check inter 1000 downinter 20 fall ")


def test_server_args_inter_never_zero() -> None:
    settings = dataclasses.replace(S, check_inter=0.0001)
    assert server_args(Server("e1", "10.0.0.1", 80), settings).startswith(
        "check inter 1 downinter 1 ")


def test_server_args_weight_zero_is_written() -> None:
    assert server_args(Server("e1", "10.0.0.1", 80, 0), S).endswith(" weight 0")


@pytest.mark.parametrize(
    "member",
    [edge("e1\n"), edge("e1", "fe80::1%x\nserver evil 1.2.3.4"), edge("e1", "fe80::1%eth0")],
)
def test_member_that_could_split_a_config_line_never_serves(member: Member) -> None:
    d = ds(member)
    assert d.servers == {}
    assert [r.member for r in d.refused] == [member.name]
