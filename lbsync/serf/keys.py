"""The two secrets of a Serf cluster: the gossip key and the RPC auth token.

The gossip key (`encrypt_key`) makes memberlist encrypt and authenticate every packet, so
an agent without it can neither join nor read the gossip; the RPC token (`rpc_auth`) keeps
any local user from reading or changing the agent over its RPC port (`serf members`, `serf
tags`, `serf join`...). Serf takes both from a JSON `-config-file` (names from hashicorp/serf
cmd/serf/command/agent/config.go), which keeps them off command lines that `ps` shows.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import secrets
from pathlib import Path

from lbsync.model import LbsyncError

GOSSIP_KEY_BYTES = 32  # AES-256, what `serf keygen` makes


class KeyFileError(LbsyncError):
    """A key or token file is missing, unreadable or not in the expected form."""


def new_gossip_key() -> str:
    """A fresh gossip key in Serf's form: base64 of 32 random bytes (`serf keygen`)."""
    return base64.b64encode(os.urandom(GOSSIP_KEY_BYTES)).decode()


def new_rpc_token() -> str:
    """A fresh RPC auth token: any string works for Serf; URL-safe text pastes cleanly."""
    return secrets.token_urlsafe(32)


def check_gossip_key(text: str, where: str) -> str:
    """The key stripped, or a KeyFileError: Serf refuses anything but 16, 24 or 32 bytes,
    and saying so here beats an agent that exits under supervisord."""
    key = text.strip()
    try:
        raw = base64.b64decode(key, validate=True)
    except (binascii.Error, ValueError):
        raise KeyFileError(f"{where}: the gossip key is not base64 (make one with "
                           "`serf keygen`)") from None
    if len(raw) not in (16, 24, 32):
        raise KeyFileError(f"{where}: the gossip key is {len(raw)} bytes; Serf wants 16, "
                           "24 or 32")
    return key


def read_key_file(path: Path, what: str) -> str:
    """One secret from a file of its own, stripped of the newline editors add."""
    try:
        text = path.read_text(encoding="utf-8").strip()
    except OSError as e:
        raise KeyFileError(f"{what} {path}: {e.strerror or e}") from None
    if not text:
        raise KeyFileError(f"{what} {path} is empty")
    return text


def agent_config(encrypt_key: str, rpc_auth: str) -> str:
    """The JSON config file that gives a Serf agent both secrets (write it 0600)."""
    return json.dumps({"encrypt_key": encrypt_key, "rpc_auth": rpc_auth}, indent=2) + "\n"
