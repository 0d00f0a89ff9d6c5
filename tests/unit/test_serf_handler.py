"""parse_handler_input: Serf's event-handler stdin, including hostile member input."""

from __future__ import annotations

import pytest

from lbsync.model import EventKind, MemberStatus
from lbsync.serf.handler import parse_handler_input

NOW = 1700000000.0
GOOD = "web-1\t10.0.0.5\tedge\trole=edge,port=8080\n"


def parse(text: str, event: str = "member-join") -> tuple[list[str], list[str]]:
    """Names accepted and reasons refused, for compact assertions."""
    result, refused = parse_handler_input(event, text, NOW)
    assert result is not None
    return [m.name for m in result.members], [r.reason for r in refused]


def test_one_member_fully_decoded() -> None:
    event, refused = parse_handler_input("member-join", GOOD, NOW)
    assert refused == []
    assert event is not None and event.kind is EventKind.JOIN
    (member,) = event.members
    assert member.name == "web-1"
    assert member.addr == "10.0.0.5"
    assert dict(member.tags) == {"role": "edge", "port": "8080"}
    assert member.status is MemberStatus.ALIVE
    assert member.last_event == "member-join"
    assert member.time == NOW


@pytest.mark.parametrize(
    ("event", "status"),
    [
        ("member-join", MemberStatus.ALIVE),
        ("member-update", MemberStatus.ALIVE),
        ("member-leave", MemberStatus.LEFT),
        ("member-failed", MemberStatus.FAILED),
        ("member-reap", MemberStatus.NONE),  # Serf forgot it (lbsync.model.EVENT_STATUS)
    ],
)
def test_status_follows_the_event(event: str, status: MemberStatus) -> None:
    result, _ = parse_handler_input(event, GOOD, NOW)
    assert result is not None
    assert result.kind.value == event
    assert result.members[0].status is status
    assert result.members[0].last_event == event


@pytest.mark.parametrize("event", ["user", "query"])
def test_non_member_events_give_nothing(event: str) -> None:
    assert parse_handler_input(event, "some payload\twith\ttabs\n", NOW) == (None, [])


@pytest.mark.parametrize("event", ["", "member_join", "MEMBER-JOIN", "join", "member-join\n"])
def test_unknown_event_is_an_error(event: str) -> None:
    with pytest.raises(ValueError, match="SERF_EVENT"):
        parse_handler_input(event, GOOD, NOW)


def test_empty_stdin_is_an_empty_event() -> None:
    result, refused = parse_handler_input("member-leave", "", NOW)
    assert result is not None and result.members == () and refused == []


def test_blank_lines_and_missing_final_newline_are_fine() -> None:
    text = "\n" + GOOD + "\n" + "web-2\t10.0.0.6\tedge\trole=edge"
    assert parse(text) == (["web-1", "web-2"], [])


def test_member_without_tags() -> None:
    # What Serf writes for a node started without any -tag.
    result, refused = parse_handler_input("member-join", "bare\t127.0.0.44\t\t\n", NOW)
    assert refused == [] and result is not None
    assert dict(result.members[0].tags) == {}


def test_ipv6_address() -> None:
    names, refused = parse("v6\tfd00::5\t\tport=80\n")
    assert names == ["v6"] and refused == []


def test_bad_lines_are_refused_and_the_rest_kept() -> None:
    text = GOOD + "broken line without tabs\n" + "web-2\t10.0.0.6\tedge\trole=edge\n"
    result, refused = parse_handler_input("member-join", text, NOW)
    assert result is not None
    assert [m.name for m in result.members] == ["web-1", "web-2"]
    assert len(refused) == 1
    assert refused[0].member == "broken line without tabs"
    assert "line 2" in refused[0].reason and "4 tab-separated fields" in refused[0].reason


@pytest.mark.parametrize(
    "line",
    [
        "web-1 10.0.0.5 edge role=edge",  # spaces instead of tabs
        "web-1\t10.0.0.5\tedge",  # tags column missing
        "web-1\t10.0.0.5",
        "web-1",
        "web-1\t10.0.0.5\tedge\trole=edge\textra",
        "\t\t\t",
        " ",
    ],
)
def test_wrong_field_count(line: str) -> None:
    names, reasons = parse(line + "\n")
    assert names == [] and len(reasons) == 1


@pytest.mark.parametrize(
    "name",
    [
        "web;reboot",
        "web#1",
        'web"1',
        "web'1",
        "web 1",
        "wéb",  # non-ASCII
        "web\u200b1",  # zero-width space
        "web\\n1",  # Serf's escaped newline arrives as backslash + n
        "web\\t1",
        "-web",  # leading '-' looks like an option
        ".",
        "..",
        "web/1",
        "web:1",
        "a" * 64,
    ],
)
def test_bad_names_are_refused(name: str) -> None:
    names, reasons = parse(f"{name}\t10.0.0.5\tedge\trole=edge\n")
    assert names == []
    assert len(reasons) == 1 and "node name" in reasons[0]


def test_longest_allowed_name() -> None:
    assert parse("a" * 63 + "\t10.0.0.5\t\t\n")[0] == ["a" * 63]


def test_refused_name_is_printable_and_short() -> None:
    line = "x\x1b[31m" + "y" * 100 + "\t1.2.3.4\t\t\n"
    _, refused = parse_handler_input("member-join", line, NOW)
    (refusal,) = refused
    assert refusal.member.isprintable() and refusal.member.isascii()
    assert len(refusal.member) <= 40


def test_newline_injection_cannot_forge_a_member() -> None:
    # A raw newline inside a name (if anything ever let one through) splits the line;
    # neither half may become a member.
    text = "evil\nweb-9\t10.0.0.9\tedge\trole=edge\t\n"
    names, reasons = parse(text)
    assert names == [] and len(reasons) == 2


def test_carriage_return_does_not_split_lines() -> None:
    names, reasons = parse("web-1\t10.0.0.5\tedge\trole=edge\r\n")
    # The \r stays in the role tag's value, which tags_problem refuses.
    assert names == [] and len(reasons) == 1


@pytest.mark.parametrize("sep", ["\x1c", "\x85", "\u2028", "\x0b"])
def test_unicode_line_separators_do_not_split_lines(sep: str) -> None:
    names, reasons = parse(f"web-1\t10.0.0.5\tedge\trole=edge{sep}web-2\t10.0.0.6\t\t\n")
    assert names == [] and len(reasons) == 1


@pytest.mark.parametrize(
    "addr", ["", "web-1.example.com", "10.0.0.300", "10.0.0.5;rm", "10.0.0.5:80", "[::1]"]
)
def test_bad_addresses_are_refused(addr: str) -> None:
    names, reasons = parse(f"web-1\t{addr}\tedge\trole=edge\n")
    assert names == [] and "address" in reasons[0]


@pytest.mark.parametrize(
    ("tags", "why"),
    [
        ("role=edge,port", "not key=value"),
        ("=edge", "not key=value"),
        ("role=edge,,port=80", "not key=value"),
        ("role=edge,", "not key=value"),
        ("role=edge,role=edge", "appears twice"),
        ("role=edge,port=80;reboot", "outside"),
        ("role=edge,port=80 #x", "outside"),
        ('role=edge,port="80"', "outside"),
        ("role=edge,note=caf\u00e9", "outside"),
        ("role=edge,note=a\\nb", "outside"),  # Serf-escaped newline in a value
        ("role=edge,k y=1", "outside"),
        ("role=edge,port=" + "8" * 64, "outside"),
        ("role=edge,x=a=b", "outside"),
    ],
)
def test_bad_tags_are_refused(tags: str, why: str) -> None:
    names, reasons = parse(f"web-1\t10.0.0.5\tedge\t{tags}\n")
    assert names == []
    assert len(reasons) == 1 and why in reasons[0]


def test_role_column_must_match_role_tag() -> None:
    names, reasons = parse("web-1\t10.0.0.5\tadmin\trole=edge\n")
    assert names == [] and "role column" in reasons[0]
    names, reasons = parse("web-1\t10.0.0.5\tedge\tport=80\n")
    assert names == [] and "role column" in reasons[0]


def test_comma_in_a_tag_value_is_ambiguous() -> None:
    # `serf agent -tag x=a,b=c` sets x to "a,b=c" and Serf prints it unescaped; the
    # handler format cannot tell it from two tags, so that is what comes out.
    result, refused = parse_handler_input("member-join", "n1\t1.2.3.4\t\tx=a,b=c\n", NOW)
    assert refused == [] and result is not None
    assert dict(result.members[0].tags) == {"x": "a", "b": "c"}


def test_duplicate_member_in_one_event_is_refused() -> None:
    names, reasons = parse(GOOD + GOOD)
    assert names == ["web-1"]
    assert len(reasons) == 1 and "twice" in reasons[0]


def test_refusal_names_the_member_when_the_name_is_fine() -> None:
    _, refused = parse_handler_input("member-join", "web-1\tnope\tedge\trole=edge\n", NOW)
    assert refused[0].member == "web-1"
