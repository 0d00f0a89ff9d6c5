"""`HOST:PORT` of a Serf agent's RPC, parsed strictly (IPv6 in brackets).

Only the unit tests use it (tests/unit/test_serf_rpc_codec.py); the product reads
addresses with lbsync.settings.parse_hostport.
"""

from __future__ import annotations

from lbsync.validate import parse_port


def parse_rpc_addr(text: str) -> tuple[str, int]:
    """`HOST:PORT` (IPv6 as `[::1]:7373`) as the pair socket.create_connection wants."""
    text = text.strip()
    if not text:
        raise ValueError("RPC address is empty; expected HOST:PORT such as 127.0.0.1:7373")
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise ValueError(f"RPC address {text!r} should look like [IPv6]:PORT")
        port_text = rest[1:]
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep:
            raise ValueError(f"RPC address {text!r} has no port; expected HOST:PORT")
        if ":" in host:
            raise ValueError(f"RPC address {text!r}: put an IPv6 host in brackets, [::1]:7373")
    if not host:
        raise ValueError(f"RPC address {text!r} has no host; expected HOST:PORT")
    return host, parse_port(port_text, what=f"RPC port in {text!r}")
