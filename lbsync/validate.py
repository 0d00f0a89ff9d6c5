"""What member input may reach haproxy.cfg or a runtime command.

Node names, tag keys and tag values come from any machine that can join the gossip, so
they are untrusted. A name becomes a server name, a cookie, a file name in the registry
and a word in a runtime command; anything outside a narrow alphabet is refused here,
once, so no later stage has to quote or escape.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping

MAX_NAME = 63
# HAProxy accepts [A-Za-z0-9_.:-] in proxy and server names; ':' is left out because the
# registry uses names as file names and '.'-only names would be '.' or '..'.
# fullmatch, never `^...$`: `$` also matches before a final newline, and "node1\n" would
# pass and split a config line.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}", re.ASCII)
_TAG_KEY = re.compile(r"[A-Za-z0-9_.-]{1,63}", re.ASCII)
# Tag values are never written to the config as free text; they are parsed (port, weight)
# or compared (role). Still refuse anything that could split a handler line or a command.
_TAG_VALUE = re.compile(r"[A-Za-z0-9_.:/@+-]{0,63}", re.ASCII)


def name_problem(name: str) -> str | None:
    """Why `name` cannot be a server name, or None when it can."""
    if not name:
        return "empty node name"
    if len(name) > MAX_NAME:
        return f"node name longer than {MAX_NAME} characters"
    if not name.isascii() or not _NAME.fullmatch(name):
        return f"node name {name!r} has characters outside [A-Za-z0-9_.-] (or starts with one)"
    return None


def tags_problem(tags: Mapping[str, str]) -> str | None:
    """Why these tags cannot be used, or None."""
    for key, value in tags.items():
        if not key.isascii() or not _TAG_KEY.fullmatch(key):
            return f"tag key {key!r} has characters outside [A-Za-z0-9_.-]"
        if not value.isascii() or not _TAG_VALUE.fullmatch(value):
            return f"tag {key}={value!r} has characters outside [A-Za-z0-9_.:/@+-]"
    return None


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def addr_problem(addr: str, allowed: Iterable[Network]) -> str | None:
    """Why `addr` cannot be a server address (not an IP, or outside the allowed networks)."""
    if "%" in addr:
        # Python accepts any text after an IPv6 scope `%`, newlines included.
        return f"address {addr!r} has an IPv6 scope id"
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        return f"address {addr!r} is not an IP address"
    nets = list(allowed)
    if nets and not any(ip.version == n.version and ip in n for n in nets):
        return f"address {addr} is outside --allow-cidr {','.join(str(n) for n in nets)}"
    return None


def _bounded_int(value: str, what: str, low: int, high: int) -> int:
    # isdigit() alone admits "²" and other digits int() refuses.
    if not (value.isascii() and value.isdigit()):
        raise ValueError(f"{what} {value!r} is not a number")
    number = int(value)
    if not low <= number <= high:
        raise ValueError(f"{what} {number} is outside {low}-{high}")
    return number


def parse_port(value: str, what: str = "port") -> int:
    """A TCP port from text; ValueError with a clear message when it is not one."""
    return _bounded_int(value, what, 1, 65535)


def parse_weight(value: str) -> int:
    """An HAProxy server weight (0-256) from text."""
    return _bounded_int(value, "weight", 0, 256)
