"""Parse what `serf agent -event-handler` hands a handler: SERF_EVENT plus stdin lines.

For member events Serf writes one line per member (cmd/serf/command/agent/invoke.go):

    NAME <TAB> ADDRESS <TAB> ROLE <TAB> TAGS

ROLE is the value of the `role` tag (empty without one) and TAGS is `k=v,k2=v2` in Go's
random map order. Serf replaces tabs and newlines inside NAME, ROLE and TAGS with the
two characters `\\t` / `\\n` but does not escape `,` or `=`, so a tag value holding a
comma cannot be told apart from two tags; such input ends up refused or, at worst, as
extra tags the member could have set itself anyway.
"""

from __future__ import annotations

from lbsync.model import EVENT_STATUS, EventKind, Member, MemberEvent, Refusal
from lbsync.validate import addr_problem, name_problem, tags_problem

NON_MEMBER_EVENTS = frozenset({"user", "query"})
_KNOWN = ", ".join([*(k.value for k in EventKind), *sorted(NON_MEMBER_EVENTS)])
_SHOWN = 40  # characters of a bad name quoted back in a Refusal


def parse_handler_input(
    event: str, stdin_text: str, now: float
) -> tuple[MemberEvent | None, list[Refusal]]:
    """The member event Serf handed an event handler, and the lines lbsync refuses.

    Returns (None, []) for user events and queries. Raises ValueError when `event` is
    not one of Serf's event names (the handler was run by something other than Serf).
    """
    if event in NON_MEMBER_EVENTS:
        return None, []
    try:
        kind = EventKind(event)
    except ValueError:
        shown = "is not set" if not event else f"{event!r:.{_SHOWN}} is not a Serf event"
        raise ValueError(f"SERF_EVENT {shown}; expected one of {_KNOWN}") from None
    members: list[Member] = []
    refused: list[Refusal] = []
    seen: set[str] = set()
    # split("\n"), not splitlines(): Serf ends lines with \n only, and splitlines would
    # also break on \r, \x1c, \u2028 ... that a hostile name may carry.
    for number, line in enumerate(stdin_text.split("\n"), start=1):
        if not line:
            continue  # the final newline, or an empty line that names no one
        member, problem = _parse_line(line, kind, now)
        if member is not None and member.name in seen:
            problem = f"node {member.name} appears twice in one {kind.value} event"
        if problem is not None:
            name = member.name if member is not None else _first_field(line)
            refused.append(Refusal(name, f"handler input line {number}: {problem}"))
            continue
        assert member is not None
        seen.add(member.name)
        members.append(member)
    return MemberEvent(kind, tuple(members)), refused


def _parse_line(line: str, kind: EventKind, now: float) -> tuple[Member | None, str | None]:
    """A member, or why the line cannot be one (with the member when the name was fine)."""
    fields = line.split("\t")
    if len(fields) != 4:
        return None, (
            f"expected 4 tab-separated fields (name, address, role, tags), got {len(fields)}"
        )
    name, addr, role, tag_text = fields
    problem = name_problem(name)
    if problem is not None:
        return None, problem
    tags, problem = _parse_tags(tag_text)
    if problem is None:
        problem = tags_problem(tags) or addr_problem(addr, ())
    if problem is None and role != tags.get("role", ""):
        # Serf derives the column from the tag, so a mismatch means the line was split
        # somewhere other than where Serf put the tabs.
        problem = f"role column {role!r:.{_SHOWN}} does not match the role tag"
    member = Member(name, addr, tags, EVENT_STATUS[kind], kind.value, now)
    return member, problem


def _parse_tags(text: str) -> tuple[dict[str, str], str | None]:
    tags: dict[str, str] = {}
    if not text:
        return tags, None
    for item in text.split(","):
        key, sep, value = item.partition("=")
        if not sep or not key:
            return tags, f"tag {item!r:.{_SHOWN}} is not key=value (a value with ',' in it?)"
        if key in tags:
            return tags, f"tag {key!r:.{_SHOWN}} appears twice (a value with ',' in it?)"
        tags[key] = value
    return tags, None


def _first_field(line: str) -> str:
    """The would-be node name of a line, printable and short, for the Refusal."""
    name = line.split("\t", 1)[0]
    if name_problem(name) is None:
        return name
    return ascii(name)[1:-1][:_SHOWN]
