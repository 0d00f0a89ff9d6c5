"""The one `serf agent` command line lbsync, its local cluster, its tests and its benchmark
start (the images' s6 run scripts stay shell, for a student to read).

Only the spelling is checked here, not what lbsync would accept from a member: a test may
start an agent whose name or tags lbsync must refuse (`evil;name`), so names and tags
are refused only when Serf itself would read them otherwise (an empty name, a tag key
with '=', a line break).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

from ..model import LbsyncError

PROFILES = ("lan", "wan", "local")
LOG_LEVELS = ("trace", "debug", "info", "warn", "err")


class SerfAgentArgsError(LbsyncError):
    """A `serf agent` command line cannot be built from these values."""


def _bad_text(text: str) -> bool:
    return any(ord(c) < 0x20 or ord(c) == 0x7F for c in text)


def _word(value: str, what: str) -> str:
    if not value or _bad_text(value):
        raise SerfAgentArgsError(f"serf agent {what}: {value!r} is empty or has a control "
                                 "character")
    return value


def _tag(key: str, value: str) -> str:
    if not key or "=" in key or _bad_text(key) or key != key.strip():
        raise SerfAgentArgsError(f"serf agent -tag: key {key!r} is empty or has '=', spaces "
                                 "at its ends or a control character")
    if _bad_text(value):
        raise SerfAgentArgsError(f"serf agent -tag {key}: value {value!r} has a control "
                                 "character")
    return f"{key}={value}"


def _many(addresses: str | Iterable[str]) -> tuple[str, ...]:
    """One address or many (a bare string is one, not its characters)."""
    return (addresses,) if isinstance(addresses, str) else tuple(addresses)


def serf_agent_argv(
    node: str,
    bind: str,
    rpc_addr: str,
    *,
    serf: str = "serf",
    advertise: str | None = None,
    tags: Mapping[str, str] | None = None,
    join: str | Iterable[str] = (),
    retry_join: str | Iterable[str] = (),
    retry_interval: str | None = None,
    profile: str | None = None,
    snapshot: str | Path | None = None,
    rejoin: bool = False,
    event_handler: str | None = None,
    config_file: str | Path | None = None,
    encrypt: str | None = None,
    log_level: str | None = "warn",
) -> list[str]:
    """`serf agent` for node NODE gossiping on BIND (HOST:PORT) with its RPC on RPC_ADDR.

    None leaves a flag out (Serf's default); `log_level=None` too (Serf's `info`).
    """
    if not node or _bad_text(node) or node != node.strip():
        raise SerfAgentArgsError(f"serf agent -node: {node!r} is empty or has spaces at its "
                                 "ends or a control character")
    argv = [serf, "agent", "-node", node, "-bind", _word(bind, "-bind"),
            "-rpc-addr", _word(rpc_addr, "-rpc-addr")]
    if advertise is not None:
        argv += ["-advertise", _word(advertise, "-advertise")]
    if profile is not None:
        if profile not in PROFILES:
            raise SerfAgentArgsError(f"serf agent -profile: {profile!r} is not one of "
                                     f"{', '.join(PROFILES)}")
        argv += ["-profile", profile]
    if log_level is not None:
        if log_level not in LOG_LEVELS:
            raise SerfAgentArgsError(f"serf agent -log-level: {log_level!r} is not one of "
                                     f"{', '.join(LOG_LEVELS)}")
        argv += ["-log-level", log_level]
    if config_file is not None:
        argv += ["-config-file", _word(str(config_file), "-config-file")]
    if encrypt is not None:
        argv += ["-encrypt", _word(encrypt, "-encrypt")]
    for key, value in (tags or {}).items():
        argv += ["-tag", _tag(key, value)]
    for address in _many(join):
        argv += ["-join", _word(address, "-join")]
    for address in _many(retry_join):
        argv += ["-retry-join", _word(address, "-retry-join")]
    if retry_interval is not None:
        argv += ["-retry-interval", _word(retry_interval, "-retry-interval")]
    if snapshot is not None:
        argv += ["-snapshot", _word(str(snapshot), "-snapshot")]
    if rejoin:
        argv.append("-rejoin")
    if event_handler is not None:
        argv += ["-event-handler", _word(event_handler, "-event-handler")]
    return argv
