"""lbsync.validate: the narrow alphabet member input must fit before it reaches HAProxy."""

from __future__ import annotations

import ipaddress

import pytest

from lbsync.validate import (
    MAX_NAME,
    addr_problem,
    name_problem,
    parse_port,
    parse_weight,
    tags_problem,
)

# --- node names --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    ["a", "node1", "edge-01", "edge_01", "edge.example.com", "A9", "1node", "a..b", "a-", "a."],
)
def test_name_accepted(name: str) -> None:
    assert name_problem(name) is None


@pytest.mark.parametrize(
    "name",
    [
        "two words",
        "tab\there",
        "line\nbreak",
        "semi;colon",
        "hash#tag",
        'dq"uote',
        "sq'uote",
        "caf\u00e9",  # non-ASCII letter
        "\u0661\u0662",  # Arabic-Indic digits: isdigit()/isalnum() but not ASCII
        "-leading-dash",
        ".leading-dot",
        ".",
        "..",
        "../x",
        "a/b",
        "a:b",  # HAProxy allows ':' but the registry file name must not carry it
        "a\\b",
        "a\x00b",
        "a\rb",
        " lead",
        "trail ",
    ],
)
def test_name_refused(name: str) -> None:
    problem = name_problem(name)
    assert problem is not None
    assert "characters outside" in problem


@pytest.mark.parametrize("suffix", ["\n", "\r\n"])
def test_name_with_trailing_line_break_refused(suffix: str) -> None:
    # A server name ending in a newline would split a haproxy.cfg line and a runtime
    # command in two; the pattern must not let `$` match before a final "\n".
    assert name_problem("node1" + suffix) is not None


def test_empty_name_refused() -> None:
    assert name_problem("") == "empty node name"


def test_name_length_limit_is_63() -> None:
    assert MAX_NAME == 63
    assert name_problem("a" * 63) is None
    problem = name_problem("a" * 64)
    assert problem is not None
    assert "longer than 63" in problem


# --- tags --------------------------------------------------------------------------------


def test_plain_tags_accepted() -> None:
    tags = {"role": "edge", "port": "8080", "weight": "100", "ready": "1",
            "url": "http://x.example/path", "who": "me@host", "v": "1+2", "empty": ""}
    assert tags_problem(tags) is None


def test_no_tags_accepted() -> None:
    assert tags_problem({}) is None


@pytest.mark.parametrize("key", ["", "a b", "a=b", "a,b", "k\n", "k;", "k#", "caf\u00e9",
                                 "k" * 64, "a:b", "a/b"])
def test_bad_tag_key_refused(key: str) -> None:
    problem = tags_problem({key: "x"})
    assert problem is not None
    assert problem.startswith("tag key")


@pytest.mark.parametrize(
    "value",
    ["a b", "a,b", "a=b", "a;b", "a#b", 'a"b', "a'b", "caf\u00e9", "\u0661", "a\tb",
     "v" * 64, "edge\n", "8080\n"],
)
def test_bad_tag_value_refused(value: str) -> None:
    problem = tags_problem({"role": value})
    assert problem is not None
    assert problem.startswith("tag role=")


def test_tag_key_and_value_length_limits() -> None:
    assert tags_problem({"k" * 63: "v" * 63}) is None


def test_first_bad_tag_is_named_among_good_ones() -> None:
    problem = tags_problem({"role": "edge", "port": "80 80"})
    assert problem is not None
    assert "port" in problem


# --- addresses ---------------------------------------------------------------------------


@pytest.mark.parametrize("addr", ["10.0.0.1", "0.0.0.0", "255.255.255.255", "::1",
                                  "2001:db8::5", "::ffff:10.0.0.1"])
def test_addr_accepted_without_allow_cidr(addr: str) -> None:
    assert addr_problem(addr, ()) is None


@pytest.mark.parametrize(
    "addr",
    ["", "localhost", "node1.example", "10.0.0", "10.0.0.256", "10.0.0.1:80",
     " 10.0.0.1", "10.0.0.1\n", "10.0.0.1;", "[::1]", "::1/128", "10.0.0.0/8", "1"],
)
def test_addr_not_an_ip_refused(addr: str) -> None:
    problem = addr_problem(addr, ())
    assert problem is not None
    assert "is not an IP address" in problem


@pytest.mark.parametrize(
    "addr",
    ["fe80::1%eth0", "fe80::1%x y", "fe80::1%a;b", "fe80::1%\nserver evil 1.2.3.4:80"],
)
def test_ipv6_scope_id_refused(addr: str) -> None:
    # Python's ipaddress accepts "%<anything but %>" after an IPv6 address. The address is
    # written verbatim into haproxy.cfg and `add server`, so the scope must be refused.
    assert addr_problem(addr, ()) is not None


def test_ipv6_scope_id_refused_inside_allowed_network() -> None:
    nets = [ipaddress.ip_network("fe80::/10")]
    assert addr_problem("fe80::1%x\nserver evil 1.2.3.4:80", nets) is not None


def _nets(*cidrs: str) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    return [ipaddress.ip_network(c) for c in cidrs]


def test_addr_inside_allowed_v4_network() -> None:
    assert addr_problem("10.1.2.3", _nets("10.0.0.0/8")) is None


def test_addr_outside_allowed_v4_network() -> None:
    problem = addr_problem("192.168.1.1", _nets("10.0.0.0/8"))
    assert problem is not None
    assert "outside --allow-cidr 10.0.0.0/8" in problem


def test_addr_inside_allowed_v6_network() -> None:
    assert addr_problem("2001:db8::7", _nets("2001:db8::/32")) is None


def test_addr_outside_allowed_v6_network() -> None:
    assert addr_problem("2001:db9::7", _nets("2001:db8::/32")) is not None


def test_v4_addr_with_only_v6_networks_refused() -> None:
    assert addr_problem("10.0.0.1", _nets("::/0")) is not None


def test_v6_addr_with_only_v4_networks_refused() -> None:
    assert addr_problem("::1", _nets("0.0.0.0/0")) is not None


def test_any_of_several_networks_suffices() -> None:
    nets = _nets("10.0.0.0/8", "2001:db8::/32", "192.168.0.0/16")
    assert addr_problem("192.168.5.5", nets) is None
    assert addr_problem("2001:db8::1", nets) is None
    problem = addr_problem("172.16.0.1", nets)
    assert problem is not None
    assert "10.0.0.0/8,2001:db8::/32,192.168.0.0/16" in problem


def test_allowed_networks_may_be_a_generator() -> None:
    assert addr_problem("10.0.0.1", (n for n in _nets("10.0.0.0/8"))) is None


def test_bad_addr_is_refused_before_the_cidr_check() -> None:
    problem = addr_problem("nope", _nets("10.0.0.0/8"))
    assert problem is not None
    assert "not an IP address" in problem


# --- ports and weights -------------------------------------------------------------------


@pytest.mark.parametrize(("text", "value"), [("1", 1), ("80", 80), ("65535", 65535),
                                             ("08080", 8080)])
def test_port_parsed(text: str, value: int) -> None:
    assert parse_port(text) == value


@pytest.mark.parametrize("text", ["0", "65536", "70000", "99999999"])
def test_port_out_of_range(text: str) -> None:
    with pytest.raises(ValueError, match="outside 1-65535"):
        parse_port(text)


@pytest.mark.parametrize("text", ["", "-1", "+80", "80.0", "eighty", " 80", "80\n", "0x50"])
def test_port_not_a_number(text: str) -> None:
    with pytest.raises(ValueError, match="is not a number"):
        parse_port(text)


def test_port_message_names_what() -> None:
    with pytest.raises(ValueError, match="^tag port 0 is outside"):
        parse_port("0", "tag port")


@pytest.mark.parametrize(("text", "value"), [("0", 0), ("1", 1), ("100", 100), ("256", 256)])
def test_weight_parsed(text: str, value: int) -> None:
    assert parse_weight(text) == value


@pytest.mark.parametrize("text", ["257", "1000"])
def test_weight_out_of_range(text: str) -> None:
    with pytest.raises(ValueError, match="outside 0-256"):
        parse_weight(text)


@pytest.mark.parametrize("text", ["", "-1", "1.5", "heavy", "10 "])
def test_weight_not_a_number(text: str) -> None:
    with pytest.raises(ValueError, match="is not a number"):
        parse_weight(text)
