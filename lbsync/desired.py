"""Members + settings -> the servers the managed backend should hold (pure).

This is also the one place that spells a server for HAProxy (`server_args`), so a line in
haproxy.cfg and the `add server` command for the same member can never disagree.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping

from .model import DesiredState, Member, MemberStatus, Refusal, Server
from .settings import Settings
from .validate import addr_problem, name_problem, parse_port, parse_weight, tags_problem

# First HAProxy release whose `add server` accepts `cookie`.
EXPLICIT_COOKIE_VERSION = (3, 0)
_NOT_READY = {"0", "false", "no"}


def explicit_cookies(version: tuple[int, ...]) -> bool:
    """3.0+: cookie = node name; 2.6-2.9: dynamic cookies from the shared key."""
    return tuple(version[:2]) >= EXPLICIT_COOKIE_VERSION


def member_server(m: Member, settings: Settings, explicit: bool) -> Server | Refusal:
    """The server a member becomes, or why it cannot become one."""
    problem = (name_problem(m.name) or tags_problem(m.tags)
               or addr_problem(m.addr, settings.allow_cidr))
    if problem:
        return Refusal(m.name, problem)
    try:
        port = parse_port(m.tags["port"], "tag port") if "port" in m.tags else settings.default_port
        weight = (parse_weight(m.tags["weight"]) if "weight" in m.tags
                  else settings.default_weight)
        agent_port = (parse_port(m.tags["agent-port"], "tag agent-port")
                      if "agent-port" in m.tags else None)
    except ValueError as e:
        return Refusal(m.name, str(e))
    # The canonical spelling of the address, never the member's own text.
    addr = str(ipaddress.ip_address(m.addr))
    return Server(m.name, addr, port, weight, m.name if explicit else None, agent_port)


def desired_state(
    members: Mapping[str, Member], settings: Settings, version: tuple[int, ...]
) -> DesiredState:
    explicit = explicit_cookies(version)
    servers: dict[str, Server] = {}
    leaving: set[str] = set()
    failed: set[str] = set()
    refused: list[Refusal] = []
    known: dict[str, Server] = {}
    for name in sorted(members):
        m = members[name]
        if m.tags.get("role") != settings.role:
            continue
        result = member_server(m, settings, explicit)
        if isinstance(result, Refusal):
            refused.append(result)
            continue
        known[name] = result
        if m.status == MemberStatus.FAILED:
            failed.add(name)
        elif m.status != MemberStatus.ALIVE or m.tags.get("ready", "1").lower() in _NOT_READY:
            # leaving/left, or a node that says it is not (or no longer) ready: it leaves.
            leaving.add(name)
        else:
            servers[name] = result
    return DesiredState(servers, frozenset(leaving), frozenset(failed), tuple(refused), explicit,
                        known)


def server_args(server: Server, settings: Settings) -> str:
    """Everything after `server NAME ADDR:PORT` (config) or `add server BE/NAME ADDR:PORT`.

    Dynamic servers do not inherit `default-server`, so every option is spelled out here.
    """
    inter_ms = max(1, round(settings.check_inter * 1000))
    # A joiner is added DOWN: downinter is how soon its first check (and UP) comes.
    downinter_ms = min(inter_ms, max(1, round(settings.check_downinter * 1000)))
    args = (f"check inter {inter_ms} downinter {downinter_ms}"
            f" fall {settings.check_fall} rise {settings.check_rise}"
            # A server from `add server` keeps no idle backend connections unless told
            # (HAProxy 2.6: idle_lim 0, purge_delay 0); these are a config server's defaults.
            f" pool-max-conn -1 pool-purge-delay 5s weight {server.weight}")
    if server.agent_port is not None:
        # The node reports its own weight (CPU idle) and `maint` while it shuts down.
        args += f" agent-check agent-port {server.agent_port} agent-inter {inter_ms}"
    if server.cookie:
        args += f" cookie {server.cookie}"
    return args
